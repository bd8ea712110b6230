"""params.yaml as one typed, validated object: defaults deep-merged with per-line overrides.

Unknown keys and wrong types are errors naming the key, so a typo in params.yaml cannot silently
fall back to a default.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .validation import check_line_name

# Every metric flows.evaluate logs (test split, at the validation threshold): gates may name any.
METRICS = (
    "image_auroc", "image_f1", "image_precision", "image_recall", "test_normal_fpr",
    "test_normal_score_q50", "test_normal_score_q95", "test_normal_score_q99",
    "pixel_auroc", "pixel_aupro",
    "train_images", "validation_normal_images", "validation_defect_images", "test_normal_images",
    "test_defect_images", "pixel_eval_images", "pixel_eval_defect_images",
)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ModelParams(_Strict):
    backbone: str = "efficientnet_lite0"
    layers: list[str] | None = None
    n_features: int | None = Field(100, gt=0)
    weights: str | None = "imagenet"
    seed: int = 0
    epsilon: float = Field(0.01, gt=0)
    top_k_percent: float | None = Field(None, gt=0, le=100)  # image score; None: the map's maximum
    pooling: Literal["per_position", "neighbourhood", "shared"] = "per_position"
    pooling_window: int = Field(3, ge=3)
    align_maps: bool = False
    channel_reduction: Literal["random_subset", "projection"] = "random_subset"


class SplitParams(_Strict):
    """Shares of the roles an image gets when it enters a line (flows.roles): normal images go to
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
    """How the image and pixel thresholds are chosen, on the validation split only."""

    normal_quantile: float = Field(0.995, gt=0, lt=1)  # rule when validation has no defects


class ExportParams(_Strict):
    """How a fitted model is stored (padim_plugin.artifact): float16 halves it again."""

    dtype: Literal["float32", "float16"] = "float32"


class GateParams(_Strict):
    floors: dict[str, float] = {}     # metric >= value
    ceilings: dict[str, float] = {}   # metric <= value
    max_drop: float = Field(0.01, ge=0)

    @field_validator("floors", "ceilings")
    @classmethod
    def _known_metrics(cls, bounds: dict[str, float]) -> dict[str, float]:
        unknown = sorted(set(bounds) - set(METRICS))
        if unknown:
            raise ValueError(f"unknown metrics {unknown}; gates can use {list(METRICS)}")
        return bounds


class LineParams(_Strict):
    """Everything that decides how one product line's model is fitted, evaluated and promoted."""

    name: str
    model: ModelParams = ModelParams()
    data: DataParams = DataParams()
    thresholds: ThresholdParams = ThresholdParams()
    export: ExportParams = ExportParams()
    gates: GateParams = GateParams()

    @field_validator("name")
    @classmethod
    def _safe_name(cls, name: str) -> str:
        return check_line_name(name)

    def flat(self) -> dict[str, Any]:
        """``{"model.backbone": ..., "gates.floors.image_auroc": ...}``, for logging as params."""
        return dict(_flatten(self.model_dump(exclude={"name"})))


class ProjectParams(_Strict):
    defaults: dict[str, Any]
    lines: dict[str, LineParams]

    def line(self, name: str) -> LineParams:
        if name not in self.lines:
            raise KeyError(f"product line {name!r} is not in params.yaml (known: {sorted(self.lines)})")
        return self.lines[name]

    def line_or_defaults(self, name: str) -> LineParams:
        """A configured line, or the defaults for a line params.yaml does not list yet."""
        return self.lines.get(name) or LineParams(name=name, **self.defaults)


def load_params(path: str | Path = "params.yaml") -> ProjectParams:
    path = Path(path)
    try:
        raw = yaml.safe_load(path.read_text()) or {}
    except (OSError, yaml.YAMLError) as error:
        raise ValueError(f"cannot read {path}: {error}") from error
    unknown = sorted(set(raw) - {"defaults", "lines"})
    if unknown:
        raise ValueError(f"{path}: unknown top-level keys {unknown} (expected defaults, lines)")
    defaults = raw.get("defaults") or {}
    lines = {}
    for name, overrides in (raw.get("lines") or {}).items():
        merged = _deep_merge(defaults, overrides or {})
        if "gates" in (overrides or {}):
            merged["gates"] = overrides["gates"]  # a line's own gates are its whole policy
        try:
            lines[name] = LineParams(name=name, **merged)
        except (ValidationError, TypeError) as error:
            raise ValueError(f"{path}: product line {name!r}: {error}") from error
    return ProjectParams(defaults=defaults, lines=lines)


def register_line(path: str | Path, name: str) -> bool:
    """Add ``lines.<name>: {}`` to params.yaml, keeping its comments; False if already there."""
    from ruamel.yaml import YAML

    check_line_name(name)
    path = Path(path)
    round_trip = YAML()
    document = round_trip.load(path.read_text())
    if document.get("lines") is None:
        document["lines"] = {}
    if name in document["lines"]:
        return False
    document["lines"][name] = {}
    with path.open("w") as stream:
        round_trip.dump(document, stream)
    return True


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


def _deep_merge(base: dict[str, Any], override: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in override.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _deep_merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def _flatten(tree: dict[str, Any], prefix: str = ""):  # noqa: ANN202
    for key, value in tree.items():
        if isinstance(value, dict):
            yield from _flatten(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value
