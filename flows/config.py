"""params.yaml as one typed, validated object: defaults deep-merged with per-line overrides.

Unknown keys and wrong types are errors naming the key, so a typo in params.yaml cannot silently
fall back to a default.
"""

from __future__ import annotations

import io
import re
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from padim_plugin.presets import PRESET_OPTIONS, PRESETS

from .data.validation import check_line_name

# Every metric flows.model.evaluate logs (test split, at the validation threshold, with the rates the
# threshold gave on validation): gates may name any.
METRICS = (
    "image_auroc", "image_f1", "image_precision", "image_recall", "test_normal_fpr",
    "image_recall_low", "image_recall_high", "test_normal_fpr_low", "test_normal_fpr_high",
    "validation_normal_fpr", "validation_recall",
    "test_normal_score_q50", "test_normal_score_q95", "test_normal_score_q99",
    "pixel_auroc", "pixel_aupro",
    "train_images", "validation_normal_images", "validation_defect_images", "test_normal_images",
    "test_defect_images", "pixel_eval_images", "pixel_eval_defect_images",
)
PIXEL_METRICS = ("pixel_auroc", "pixel_aupro")
# the metrics of the operating point, compared with the champion's whatever the gates name, and
# the direction each is better in (a false-alarm rate is better lower)
OPERATING_POINT = {"test_normal_fpr": -1, "image_recall": 1, "image_f1": 1}


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


# the option set a line gets unless params.yaml names another (padim_plugin.presets, bench/README.md)
DEFAULT_PRESET = "aligned"


class ModelParams(_Strict):
    """The line's StreamingPadim options. ``preset`` (``aligned`` unless given) names the option set;
    it is expanded when the params are read and only its options are kept, so logs, cache keys and
    artifacts record what was fitted, not a name."""

    backbone: str = "efficientnet_lite0"
    layers: list[str] | None = None
    n_features: int | None = Field(100, gt=0)
    weights: str | None = "imagenet"
    seed: int = 0
    epsilon: float = Field(0.01, gt=0)
    top_k_percent: float | None = Field(None, gt=0, le=100)  # image score; None: the map's maximum
    pooling: Literal["per_position", "neighbourhood", "shared"] = "per_position"
    pooling_window: int = Field(3, ge=3)
    align_maps: bool = PRESETS[DEFAULT_PRESET]["align_maps"]
    channel_reduction: Literal["random_subset", "projection"] = "random_subset"

    @model_validator(mode="before")
    @classmethod
    def _expand_preset(cls, settings: Any) -> Any:
        """The preset's options, then the keys given beside it (which win)."""
        if not isinstance(settings, dict):
            return settings
        settings = dict(settings)
        name = settings.pop("preset", DEFAULT_PRESET)
        if name not in PRESETS:
            raise ValueError(f"unknown preset {name!r}; presets: {', '.join(PRESETS)}")
        return PRESETS[name] | settings

    @field_validator("pooling_window")
    @classmethod
    def _odd_window(cls, window: int) -> int:
        if window % 2 == 0:
            raise ValueError(f"a window of positions has a centre only if odd: got {window}, use 3, 5, 7...")
        return window


class SplitParams(_Strict):
    """Shares of the roles an image gets when it enters a line (flows.data.roles): normal images go to
    train, validation or test (the rest); defect images to validation or test (the rest)."""

    seed: int = 0
    train: float = Field(0.7, gt=0, lt=1)
    validation: float = Field(0.1, gt=0, lt=1)
    defect_validation: float = Field(0.5, ge=0, le=1)

    @model_validator(mode="after")
    def _leaves_a_test_share(self) -> SplitParams:
        if self.train + self.validation >= 1:
            msg = (f"split.train + split.validation = {self.train + self.validation:g} leaves no normal"
                   " images for test; keep their sum below 1")
            raise ValueError(msg)
        return self


class DataParams(_Strict):
    image_size: int = Field(256, ge=32)
    train_batch_size: int = Field(32, gt=0)
    eval_batch_size: int = Field(32, gt=0)
    num_workers: int = Field(0, ge=0)
    min_train_images: int = Field(10, ge=2)
    min_validation_images: int = Field(5, ge=1)
    split: SplitParams = SplitParams()


class ThresholdParams(_Strict):
    """How the image threshold (the line's operating point) and the pixel threshold are chosen, on
    the validation split only (flows.model.thresholds)."""

    rule: Literal["false_alarm_budget", "min_recall", "f1"] = "false_alarm_budget"
    false_alarm_budget: float = Field(0.05, gt=0, lt=1)  # share of normal parts flagged, at most
    confidence: float = Field(0.9, gt=0, lt=1)  # of the budget's exact binomial upper bound
    min_recall: float = Field(0.9, gt=0, le=1)  # rule min_recall: share of validation defects flagged
    normal_quantile: float = Field(0.995, gt=0, lt=1)  # pixel threshold (and rule f1) without defects


class ExportParams(_Strict):
    """How a fitted model is stored (padim_plugin.artifact): float16 halves it again."""

    dtype: Literal["float32", "float16"] = "float32"


class GateParams(_Strict):
    """Promotion to @champion (flows.registry.gates): bounds on the candidate's test metrics, a ceiling on its
    test false-alarm rate derived from the line's budget, and no step back from the champion."""

    floors: dict[str, float] = {}     # metric >= value
    pixel_floors: dict[str, float] = {}  # pixel metric >= value, only where the line has masks
    ceilings: dict[str, float] = {}   # metric <= value
    # test_normal_fpr <= the false_alarm_allowance quantile of Binomial(test normals, budget) / test
    # normals: the budget plus what chance adds on a test split of that size; null: no such ceiling
    false_alarm_allowance: float | None = Field(0.95, gt=0, lt=1)
    max_drop: float = Field(0.01, ge=0)

    @field_validator("floors", "ceilings", "pixel_floors")
    @classmethod
    def _known_metrics(cls, bounds: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(bounds) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; gates can use {list(METRICS)}")
        return bounds

    @field_validator("pixel_floors")
    @classmethod
    def _pixel_metrics(cls, bounds: dict[str, float]) -> dict[str, float]:
        other = sorted(set(bounds) - set(PIXEL_METRICS))
        if other:
            raise ValueError(f"{other} are not pixel metrics ({list(PIXEL_METRICS)}): put them under floors")
        return bounds


class FitParams(_Strict):
    """How a retrain fits (flows.model.incremental): from the statistics kept from an earlier fit of the
    same params and code when only training images changed, else from all the images."""

    incremental: bool = True
    max_removed_share: float = Field(0.5, gt=0, le=1)  # of the kept images; above: full refit
    min_kept_variance: float = Field(0.1, gt=0, lt=1)  # a downdate keeping less of one: full refit
    # keep validation and test images' backbone maps (flows.model.features): the next retrain
    # runs the backbone only on the images it has not seen
    keep_features: bool = True


class MonitorParams(_Strict):
    """How a window of production is judged against the champion's reference (flows.monitor):
    each check's p-value, Bonferroni-corrected over the checks, against ``warn_p`` and ``drift_p``."""

    min_images: int = Field(30, ge=5)  # fewer scored in the window: no judgement
    warn_p: float = Field(0.05, gt=0, lt=1)
    drift_p: float = Field(0.01, gt=0, lt=1)
    expected_defect_rate: float = Field(0.0, ge=0, lt=1)  # real defects expected among the parts: more alarms
    on_drift: Literal["notify", "retrain"] = "notify"  # retrain: prefect.yaml's trigger retrains the line


class ProductionParams(_Strict):
    """How scoring in production is logged (padim_plugin.score_log): a row per image in the log at
    ``log``, a folder of the project or a URI such as ``s3://bucket/prefix``; null logs nothing."""

    log: str | None = ".padim/production"
    keep_images: bool = False  # each image's bytes beside its row, for review
    monitor: MonitorParams = MonitorParams()


class LineParams(_Strict):
    """Everything that decides how one product line's model is fitted, evaluated and promoted."""

    name: str
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    thresholds: ThresholdParams = ThresholdParams()
    export: ExportParams = ExportParams()
    gates: GateParams = GateParams()
    fit: FitParams = FitParams()
    production: ProductionParams = ProductionParams()
    # auto: a candidate that passes its gates becomes champion; approval: it waits as pending
    # until 'padim-mlops approve' or 'reject'
    promotion: Literal["auto", "approval"] = "auto"

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_line_name(name)

    def flat(self) -> dict[str, Any]:
        """``{"model.backbone": ..., "gates.floors.image_auroc": ...}``, for logging as a fit's
        params (how production scoring is logged is not one)."""
        return dict(_flatten(self.model_dump(exclude={"name", "production"})))


def unknown_line(name: str, known: Iterable[str]) -> str:
    """What every command says of a line params.yaml does not list."""
    listed = ", ".join(sorted(known)) or "none yet: add one with 'padim-mlops data add'"
    return f"unknown product line {name!r} (params.yaml lists: {listed})"


class ProjectParams(_Strict):
    defaults: dict[str, Any]
    lines: dict[str, LineParams]

    def line(self, name: str) -> LineParams:
        if name not in self.lines:
            raise KeyError(unknown_line(name, self.lines))
        return self.lines[name]

    def line_or_defaults(self, name: str) -> LineParams:
        """A configured line, or the defaults for a line params.yaml does not list yet."""
        check_line_name(name)
        return self.lines.get(name) or _line_params(name, self.defaults, "params.yaml", "defaults")


class _Loader(yaml.SafeLoader):
    """YAML as params.yaml needs it: a key given twice is an error (PyYAML would keep the last one
    silently), and ``1e-3`` is a number as in YAML 1.2 (PyYAML's YAML 1.1 reads it as a string)."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: dict[Any, yaml.Node] = {}
        for key_node, _ in node.value:
            if key_node.tag == "tag:yaml.org,2002:merge":
                continue  # '<<: *anchor' merges may be overridden by the mapping's own keys
            key = self.construct_object(key_node, deep=True)
            try:
                if key in seen:
                    raise yaml.constructor.ConstructorError(
                        "while reading a mapping", node.start_mark, f"key {key!r} is given twice",
                        key_node.start_mark)
                seen[key] = key_node
            except TypeError:  # an unhashable key: the base class reports it
                break
        return super().construct_mapping(node, deep=deep)


_Loader.add_implicit_resolver(
    "tag:yaml.org,2002:float", re.compile(r"^[-+]?[0-9][0-9_]*(?:\.[0-9_]*)?[eE][-+]?[0-9]+$"),
    list("-+0123456789"))


def load_params(path: str | Path = "params.yaml") -> ProjectParams:
    """Read and check the whole of params.yaml: the defaults on their own, then every line with
    them merged in. Any problem is a ValueError naming the file and the key (``defaults.model.
    n_features``, ``lines.tiles.data.split``) with the value at fault."""
    path = Path(path)
    try:
        with path.open() as stream:  # a stream, so that YAML errors name the file
            raw = yaml.load(stream, Loader=_Loader)  # a SafeLoader subclass
    except FileNotFoundError:
        raise ValueError(f"{path} does not exist: a project needs a params.yaml (see the README)") from None
    except (OSError, UnicodeDecodeError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    raw = {} if raw is None else raw
    if not isinstance(raw, dict):
        raise ValueError(f"{path}: expected a mapping with keys defaults and lines, got {_kind(raw)}")
    unknown = sorted(map(str, set(raw) - {"defaults", "lines"}))
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown} (expected defaults, lines)")
    defaults = _mapping(raw.get("defaults"), path, "defaults")
    _line_params("defaults", defaults, path, "defaults")  # the defaults alone, even with no lines
    lines = {}
    for name, value in _mapping(raw.get("lines"), path, "lines").items():
        where = f"lines.{name}"
        if not isinstance(name, str):
            raise ValueError(f"{path}: {where}: a product line name must be text, got {_kind(name)}")
        try:
            check_line_name(name)
        except ValueError as error:
            raise ValueError(f"{path}: {where}: {error}") from None
        overrides = _mapping(value, path, where)
        merged = _deep_merge(_without_preset_options(defaults, overrides), overrides)
        if "gates" in overrides:
            merged["gates"] = overrides["gates"]  # a line's own gates are its whole policy
        lines[name] = _line_params(name, merged, path, where, f"product line {name!r}: ")
    return ProjectParams(defaults=defaults, lines=lines)


def _mapping(value: object, path: str | Path, where: str) -> dict[Any, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise ValueError(f"{path}: {where}: expected a mapping of settings, got {_kind(value)}")
    return value


def _line_params(name: str, settings: dict[str, Any], path: str | Path, where: str,
                 prefix: str = "") -> LineParams:
    """``settings`` checked strictly (YAML gives real ints, floats and booleans: ``"5"`` or ``1``
    for a boolean is a mistake, not a value to convert); errors name ``where.<key>``."""
    if "name" in settings:
        msg = (f"{path}: {prefix}{where}.name: unknown key (a line's name is its key under lines:;"
               f" allowed here: {_allowed(())})")
        raise ValueError(msg)
    try:
        return LineParams.model_validate({**settings, "name": name}, strict=True)
    except ValidationError as error:
        problems = "; ".join(_problem(where, problem) for problem in error.errors())
        raise ValueError(f"{path}: {prefix}{problems}") from None


def _problem(where: str, problem: dict[str, Any]) -> str:
    """One pydantic error as ``where.key.path: what is wrong (got value)``."""
    location = tuple(problem["loc"])
    key = ".".join([where, *map(str, location)])
    if problem["type"] == "extra_forbidden":
        return f"{key}: unknown key (allowed here: {_allowed(location[:-1])})"
    message = problem["msg"].removeprefix("Value error, ")
    if problem["type"] in ("model_type", "dict_type"):
        message = "expected a mapping of settings"
    if problem["type"] == "value_error":
        return f"{key}: {message}"
    return f"{key}: {message} (got {problem['input']!r})"


def _allowed(location: tuple[Any, ...]) -> str:
    """The keys the settings model at ``location`` accepts."""
    model: Any = LineParams
    for part in location:
        field = model.model_fields.get(part) if isinstance(model, type) else None
        model = field.annotation if field is not None else None
    if not (isinstance(model, type) and issubclass(model, BaseModel)):
        return "see params.yaml"
    return ", ".join(name for name in model.model_fields if not (model is LineParams and name == "name"))


def _kind(value: object) -> str:
    if isinstance(value, (dict, list)):
        return type(value).__name__
    return f"{type(value).__name__} {value!r}"


def with_line_entry(text: str | None, name: str) -> str:
    """params.yaml's ``text`` with ``lines.<name>: {}`` added, every other byte kept where the file's
    shape allows (an entry appended to a block ``lines:`` mapping, or a ``lines:`` section added);
    else a round trip that keeps comments and writes null as ``null``. The result is checked to
    load as the same document plus the new line."""
    check_line_name(name)
    text = text or ""
    document = yaml.safe_load(text) or {}
    if not isinstance(document, dict):
        raise ValueError(f"params.yaml: expected a mapping with keys defaults and lines, got"
                         f" {_kind(document)}")
    lines = document.get("lines")
    if isinstance(lines, dict) and name in lines:
        return text
    expected = {**document, "lines": {**(lines or {}), name: {}}}
    key = name if yaml.safe_load(f"{name}: 0") == {name: 0} else f"'{name}'"  # 'true', 'null', 'on' ...
    for candidate in (_appended_entry(text, key, lines), _round_trip_entry(text, name)):
        if candidate is not None and yaml.safe_load(candidate) == expected:
            return candidate
    raise ValueError(f"params.yaml: cannot add product line {name!r} to its lines: section; add it by hand")


def _appended_entry(text: str, key: str, lines: object) -> str | None:
    """The entry inserted as text: after the last line of a block ``lines:`` mapping, or as a new
    ``lines:`` section at the end; None where the section has another shape."""
    rows = text.splitlines(keepends=True)
    if rows and not rows[-1].endswith("\n"):
        rows[-1] += "\n"
    starts = [i for i, row in enumerate(rows) if re.match(r"lines\s*:", row)]
    if lines is None and not starts:
        return "".join(rows) + f"lines:\n  {key}: {{}}\n"
    if len(starts) != 1:
        return None
    start = starts[0]
    if not isinstance(lines, dict) or not lines:  # 'lines:' or 'lines: {}': the entry becomes its block
        comment = re.search(r"\s+#.*$", rows[start].rstrip("\n"))
        rows[start] = "lines:" + (comment.group(0) if comment else "") + f"\n  {key}: {{}}\n"
        return "".join(rows)
    last, indent = start, None
    for i in range(start + 1, len(rows)):
        row = rows[i]
        if not row.strip() or row.lstrip().startswith("#"):
            continue
        if not row[0].isspace():
            break
        last = i
        if indent is None:
            indent = row[: len(row) - len(row.lstrip())]
    if indent is None:
        return None
    return "".join(rows[: last + 1] + [f"{indent}{key}: {{}}\n"] + rows[last + 1 :])


def _round_trip_entry(text: str, name: str) -> str:
    from ruamel.yaml import YAML

    round_trip = YAML()
    round_trip.representer.add_representer(
        type(None), lambda representer, _: representer.represent_scalar("tag:yaml.org,2002:null", "null"))
    document = round_trip.load(text) or {}
    if document.get("lines") is None:
        document["lines"] = {}
    document["lines"][name] = {}
    out = io.StringIO()
    round_trip.dump(document, out)
    return out.getvalue()


def set_line_model_options(path: str | Path, name: str, options: dict[str, Any]) -> None:
    """Write ``options`` into ``lines.<name>.model`` of params.yaml, keeping its comments and every
    other key; the result must still load (checked before the file is replaced)."""
    from ruamel.yaml import YAML

    path = Path(path)
    round_trip = YAML()
    document = round_trip.load(path.read_text())
    lines = document.get("lines")
    if not lines or name not in lines:
        raise KeyError(f"product line {name!r} is not in {path}")
    if lines[name] is None:
        lines[name] = {}
    if lines[name].get("model") is None:
        lines[name]["model"] = {}
    if PRESET_OPTIONS <= set(options):
        lines[name]["model"].pop("preset", None)  # it would name options the line no longer has
    lines[name]["model"].update(options)
    staged = path.with_name(f".{path.name}.new")
    with staged.open("w") as stream:
        round_trip.dump(document, stream)
    try:
        load_params(staged).line(name)
    except (ValueError, KeyError):
        staged.unlink()
        raise
    staged.replace(path)


def _without_preset_options(defaults: dict[str, Any], overrides: dict[str, Any]) -> dict[str, Any]:
    """The defaults a line's settings merge into: a line that names a preset takes that preset's
    options, not the ones the defaults chose (a key the line gives beside it still wins)."""
    line_model, default_model = overrides.get("model"), defaults.get("model")
    if not (isinstance(line_model, dict) and "preset" in line_model and isinstance(default_model, dict)):
        return defaults
    kept = {key: value for key, value in default_model.items() if key not in PRESET_OPTIONS | {"preset"}}
    return defaults | {"model": kept}


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flatten(tree: dict[str, Any], prefix: str = ""):
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
