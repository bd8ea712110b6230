"""Bad input, catalogued: every input a user gives (command line, params.yaml, revisions, line
names) is refused with a message naming the argument, key, file or value at fault, and changes
nothing. Image files have their own tests (tests/unit/test_images.py, tests/flows/test_data.py,
tests/flows/test_roles.py); the README's "What bad input gets" lists them all.

Nothing here fits a model: every case fails before one would be needed.
"""

from __future__ import annotations

from pathlib import Path

import pytest

from flows.cli import main
from flows.config import load_params
from flows.data.store import DataStore
from flows.registry.registry import Registry, model_name

from ..projects import git, init_project
from ..synthetic import write_mvtec_folder

PARAMS = """\
defaults:
  data: {min_train_images: 3, min_validation_images: 1}
lines:
  alpha: {}
"""



@pytest.fixture(scope="module")
def paths(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project whose line ``alpha`` has one data version (HEAD; HEAD~1 has no data), an
    MVTec-layout source, a folder of images, an empty folder and a path that does not exist."""
    base = tmp_path_factory.mktemp("bad_input")
    root = base / "project"
    init_project(root, base / "remote", PARAMS)
    source = write_mvtec_folder(base / "source", 5, 2, 2, n_validation=1)
    assert main(["--root", str(root), "data", "add", "alpha", str(source)]) == 0
    (base / "empty").mkdir()
    return {"root": root, "source": source, "images": source / "test" / "good", "empty": base / "empty",
            "missing": base / "missing", "bare": base}


def outcome(argv: list[str], capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    """The exit code of ``padim-mlops argv`` (argparse's exit included) and its stderr."""
    capsys.readouterr()
    try:
        code = main(argv)
    except SystemExit as exit_:
        code = exit_.code
    return code, capsys.readouterr().err


def state(root: Path) -> tuple[str, str, str]:
    """What a refused command must leave as it was: the commit, the data and params.yaml."""
    return (git(root, "rev-parse", "HEAD"), git(root, "status", "--porcelain", "--", "data", "params.yaml"),
            (root / "params.yaml").read_text())


def filled(template: list[str], paths: dict[str, Path]) -> list[str]:
    return [part.format(**{name: str(path) for name, path in paths.items()}) for part in template]


# -- command-line arguments: usage errors exit 2 naming the argument, before anything is read -------

USAGE = {
    "unknown command": (["frobnicate"], "invalid choice: 'frobnicate'"),
    "unknown data command": (["data", "push", "alpha"], "invalid choice: 'push'"),
    "data add without a line": (["data", "add"], "the following arguments are required: line"),
    "data pull without a line": (["data", "pull"], "the following arguments are required: line"),
    "data diff without a revision": (["data", "diff", "alpha"], "arguments are required: rev_a"),
    "predict without --out": (["predict", "alpha", "x.png"], "the following arguments are required: --out"),
    "predict without images": (["predict", "alpha", "--out", "o"], "required: images"),
    "export without --format": (["export", "alpha"], "the following arguments are required: --format"),
    "export unknown format": (["export", "alpha", "--format", "tflite"], "invalid choice: 'tflite'"),
    "promote without a version": (["promote", "alpha"], "the following arguments are required: version"),
    "unknown option": (["retrain", "--fast"], "unrecognized arguments: --fast"),
    "batch size not a number": (["predict", "alpha", "x.png", "--out", "o", "--batch-size", "eight"],
                                "argument --batch-size: expected a whole number, got 'eight'"),
    "batch size 0": (["predict", "alpha", "x.png", "--out", "o", "--batch-size", "0"],
                     "argument --batch-size: must be at least 1, got 0"),
    "batch size negative": (["predict", "alpha", "x.png", "--out", "o", "--batch-size=-4"],
                            "argument --batch-size: must be at least 1, got -4"),
    "parallel 0": (["retrain", "--parallel", "0"], "argument --parallel: must be at least 1, got 0"),
    "parallel not a number": (["retrain", "--parallel", "2.5"],
                              "argument --parallel: expected a whole number, got '2.5'"),
    "input size 0": (["export", "alpha", "--format", "onnx", "--input-size", "0", "256"],
                     "argument --input-size: must be at least 1, got 0"),
    "input size negative": (["export", "alpha", "--format", "onnx", "--input-size", "256", "-1"],
                            "argument --input-size: must be at least 1, got -1"),
    "input size one number": (["export", "alpha", "--format", "onnx", "--input-size", "256"],
                              "argument --input-size: expected 2 arguments"),
    "min train negative": (["data", "validate", "folder", "--min-train=-1"],
                           "argument --min-train: must be at least 0, got -1"),
    "line name looking like an option": (["data", "pull", "-x"], "arguments are required: line"),
}


@pytest.mark.parametrize(("argv", "words"), USAGE.values(), ids=list(USAGE))
def test_a_usage_error_exits_2_naming_the_argument(argv: list[str], words: str, tmp_path: Path,
                                                   capsys: pytest.CaptureFixture[str]) -> None:
    code, err = outcome(["--root", str(tmp_path / "nowhere"), *argv], capsys)
    assert code == 2
    assert words in err
    assert not (tmp_path / "nowhere").exists()


@pytest.mark.parametrize("argv", [[], ["data"]], ids=["no command", "data without a command"])
def test_no_command_prints_the_help_and_exits_2(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert main(argv) == 2
    assert "usage: padim-mlops" in capsys.readouterr().out


# -- command-line arguments that parse but cannot be honoured: exit 1, "error: ..." -----------------

REFUSED = {
    "data add with PATH and --normal": (["data", "add", "alpha", "{source}", "--normal", "{images}"],
                                        "give either PATH (MVTec layout) or --normal/--defects"),
    "data add with neither PATH nor --normal": (["data", "add", "alpha"], "give either PATH"),
    "data add --replace without --append": (["data", "add", "alpha", "{source}", "--replace"],
                                            "--replace goes with --append"),
    "data add of a missing folder": (["data", "add", "alpha", "{missing}"],
                                     "data folder {missing} does not exist"),
    "data add --normal of a missing folder": (["data", "add", "alpha", "--normal", "{missing}"],
                                              "image folder {missing} does not exist"),
    "data validate of a missing folder": (["data", "validate", "{missing}"],
                                          "{missing}: folder does not exist"),
    "promote an unknown version": (["promote", "alpha", "7", "--reason", "r"],
                                   "padim-alpha has no version 7"),
    "promote a version that is not a number": (["promote", "alpha", "latest", "--reason", "r"],
                                               "padim-alpha has no version latest"),
    "rollback without a champion": (["rollback", "alpha", "--reason", "r"],
                                    "padim-alpha has no champion to roll back"),
    "demote without a champion": (["demote", "alpha", "--reason", "r"],
                                  "padim-alpha has no champion to demote"),
    "approve a version that is not pending": (["approve", "alpha", "1", "--reason", "r"],
                                              "padim-alpha has no version 1"),
    "predict a missing file": (["predict", "alpha", "{missing}", "--out", "{bare}/out"],
                               "no such file or folder: {missing}"),
    "predict a folder without images": (["predict", "alpha", "{empty}", "--out", "{bare}/out"],
                                        "no images to score in {empty}"),
    "predict a line without a champion": (["predict", "alpha", "{images}", "--out", "{bare}/out"],
                                          "padim-alpha has no @champion in sqlite:"),
    "predict an unknown alias": (["predict", "alpha", "{images}", "--out", "{bare}/out", "--alias",
                                  "staging"], "padim-alpha has no @staging"),
    "export a line without a champion": (["export", "alpha", "--format", "onnx", "--out", "{bare}/exports"],
                                         "padim-alpha has no @champion"),

}


@pytest.mark.parametrize(("argv", "words"), REFUSED.values(), ids=list(REFUSED))
def test_a_refused_command_exits_1_naming_the_value_and_changes_nothing(
        argv: list[str], words: str, paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = state(paths["root"])
    code, err = outcome(["--root", str(paths["root"]), *filled(argv, paths)], capsys)
    assert code == 1
    message = err[err.index("error: "):]  # after any log lines of MLflow's
    assert filled([words], paths)[0] in message
    assert "Traceback" not in err and not message.startswith("error: '"), "a message, not a repr or traceback"
    assert state(paths["root"]) == before
    assert not (paths["bare"] / "out").exists() and not (paths["bare"] / "exports").exists()


NO_PROJECT = {
    "data pull": (["data", "pull", "alpha"], "{empty} is not a DVC repository (no .dvc/): run 'dvc init'"),
    "data diff": (["data", "diff", "alpha", "HEAD"], "{empty} is not a DVC repository"),
    "retrain": (["retrain"], "{empty}/params.yaml does not exist: a project needs a params.yaml"),
}


@pytest.mark.parametrize(("argv", "words"), NO_PROJECT.values(), ids=list(NO_PROJECT))
def test_a_folder_that_is_no_project_is_named(argv: list[str], words: str, paths: dict[str, Path],
                                              capsys: pytest.CaptureFixture[str]) -> None:
    code, err = outcome(["--root", str(paths["empty"]), *argv], capsys)
    assert code == 1
    assert filled([words], paths)[0] in err


# -- git revisions --------------------------------------------------------------------------------

REVISIONS = {
    "data pull --rev": ["data", "pull", "alpha", "--rev", "{rev}"],
    "data diff, older revision": ["data", "diff", "alpha", "{rev}"],
    "data diff, newer revision": ["data", "diff", "alpha", "HEAD", "{rev}"],
    "retrain --rev": ["retrain", "--rev", "{rev}"],
    "tune --rev": ["tune", "alpha", "--rev", "{rev}"],
}


@pytest.mark.parametrize("rev", ["no-such-branch", "HEAD~9", "0123abc"])
@pytest.mark.parametrize("argv", REVISIONS.values(), ids=list(REVISIONS))
def test_a_revision_that_does_not_exist_is_refused_by_name_before_any_work(
        argv: list[str], rev: str, paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = state(paths["root"])
    code, err = outcome(["--root", str(paths["root"]), *[part.format(rev=rev) for part in argv]], capsys)
    assert code == 1
    assert f"error: git revision {rev!r} does not exist in {paths['root']}" in err
    assert state(paths["root"]) == before


@pytest.mark.parametrize("argv", [["data", "pull", "alpha", "--rev=--output=/tmp/x"],
                                  ["retrain", "--rev=--all"]], ids=["data pull", "retrain"])
def test_a_revision_that_looks_like_a_git_option_is_refused(argv: list[str], paths: dict[str, Path],
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    code, err = outcome(["--root", str(paths["root"]), *argv], capsys)
    assert code == 1 and "starts with '-': give a commit, branch or tag" in err


def test_a_revision_that_exists_but_predates_the_line_names_both(paths: dict[str, Path],
                                                                 capsys: pytest.CaptureFixture[str]) -> None:
    code, err = outcome(["--root", str(paths["root"]), "data", "pull", "alpha", "--rev", "HEAD~1"], capsys)
    assert code == 1
    assert "product line 'alpha' has no data at revision" in err and "data/alpha.dvc" in err


# -- product line names: never a path out of data/, never part of an MLflow filter -----------------

BAD_NAMES = {
    "parent folder": "../etc",
    "path separator": "a/b",
    "absolute path": "/etc",
    "dot dot": "..",
    "quote": "x'",
    "backquote": "x`",
    "filter injection": "a' or name like '%",
    "backquoted filter": "a` = 'b",
    "leading dash": "-rf",
    "leading digit": "1line",
    "space": "a b",
    "semicolon": "a;b",
    "empty": "",
    "65 characters": "x" * 65,
}
LINE_COMMANDS = {
    "data add": ["data", "add", "--", "{name}", "{source}"],
    "data pull": ["data", "pull", "--", "{name}"],
    "data diff": ["data", "diff", "--", "{name}", "HEAD"],
    "retrain": ["retrain", "--", "alpha", "{name}"],
    "tune": ["tune", "--", "{name}"],
    "promote": ["promote", "--reason", "r", "--", "{name}", "1"],
    "rollback": ["rollback", "--reason", "r", "--", "{name}"],
    "demote": ["demote", "--reason", "r", "--", "{name}"],
    "approve": ["approve", "--reason", "r", "--", "{name}", "1"],
    "reject": ["reject", "--reason", "r", "--", "{name}", "1"],
    "history": ["history", "--", "{name}"],
    "review": ["review", "--", "{name}"],
    "status": ["status", "--", "{name}"],
    "predict": ["predict", "--out", "{bare}/out", "--", "{name}", "{images}"],
    "export": ["export", "--format", "onnx", "--out", "{bare}/exports", "--", "{name}"],
}


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=list(BAD_NAMES))
@pytest.mark.parametrize("argv", LINE_COMMANDS.values(), ids=list(LINE_COMMANDS))
def test_a_bad_line_name_is_a_usage_error_for_every_command(
        argv: list[str], name: str, paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = state(paths["root"])
    argv = [part.replace("{name}", "\0") for part in argv]  # a name may hold braces of its own
    argv = [name if part == "\0" else part for part in filled(argv, paths)]
    code, err = outcome(["--root", str(paths["root"]), *argv], capsys)
    assert code == 2
    argument = "lines" if argv[0] in ("retrain", "status") else "line"
    assert f"argument {argument}: invalid product line name {name!r}" in err
    assert state(paths["root"]) == before
    assert not (paths["bare"] / "out").exists() and not (paths["bare"] / "exports").exists()
    assert not (paths["root"] / "etc").exists() and not (paths["bare"] / "etc").exists()


@pytest.mark.parametrize("name", BAD_NAMES.values(), ids=list(BAD_NAMES))
def test_the_library_refuses_a_bad_line_name_before_any_registry_or_data_call(name: str, tmp_path: Path,
                                                                              paths: dict[str, Path]) -> None:
    registry = Registry(tmp_path)
    for call in (lambda: model_name(name), lambda: registry.champion(name),
                 lambda: registry.find_by_cache_key(name, "key"), lambda: registry.version(name, "1"),
                 lambda: registry.rollback(name, "r"), lambda: DataStore(paths["root"]).line_dir(name),
                 lambda: DataStore(paths["root"]).pull(name),
                 lambda: load_params(paths["root"] / "params.yaml").line_or_defaults(name)):
        with pytest.raises(ValueError, match="invalid product line name"):
            call()


def test_a_double_dash_in_a_name_is_just_a_name_not_a_comment_or_injection(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", PARAMS)
    source = write_mvtec_folder(tmp_path / "source", 5, 2, 2, n_validation=1)
    assert main(["--root", str(root), "data", "add", "a--b", str(source)]) == 0
    assert "a--b" in load_params(root / "params.yaml").lines
    assert DataStore(root).pull("a--b").path.is_dir()
    # another line's registered model, which a filter cut short by '--' would match
    registry = Registry(root)
    registry.client.create_registered_model(model_name("alpha"))
    version = registry.client.create_model_version(model_name("alpha"), str(tmp_path),
                                                   tags={"padim.cache_key": "key"})
    registry.promote("alpha", str(version.version), "test", override_gates=True)
    assert registry.find_by_cache_key("alpha", "key") is not None
    assert registry.find_by_cache_key("a--b", "key") is None
    assert registry.champion("a--b") is None
    for argv, words in ((["rollback", "a--b", "--reason", "r"], "padim-a--b has no champion to roll back"),
                        (["promote", "a--b", "1", "--reason", "r"], "padim-a--b has no version 1"),
                        (["predict", "a--b", str(source), "--out", str(tmp_path / "o")],
                         "padim-a--b has no @champion")):
        code, err = outcome(["--root", str(root), *argv], capsys)
        assert code == 1 and words in err
    assert str(registry.champion("alpha").version) == str(version.version)


UNKNOWN_LINE_COMMANDS = {
    "data add --append": ["data", "add", "nosuch", "--append", "--normal", "{images}"],
    "data pull": ["data", "pull", "nosuch"],
    "data diff": ["data", "diff", "nosuch", "HEAD"],
    "retrain": ["retrain", "alpha", "nosuch"],
    "tune": ["tune", "nosuch"],
    "predict": ["predict", "nosuch", "{images}", "--out", "{bare}/out"],
    "export": ["export", "nosuch", "--format", "onnx", "--out", "{bare}/exports"],
    "promote": ["promote", "nosuch", "1", "--reason", "r"],
    "rollback": ["rollback", "nosuch", "--reason", "r"],
    "demote": ["demote", "nosuch", "--reason", "r"],
    "approve": ["approve", "nosuch", "1", "--reason", "r"],
    "reject": ["reject", "nosuch", "1", "--reason", "r"],
    "history": ["history", "nosuch"],
    "review": ["review", "nosuch"],
    "status": ["status", "nosuch"],
}


@pytest.mark.parametrize("argv", UNKNOWN_LINE_COMMANDS.values(), ids=list(UNKNOWN_LINE_COMMANDS))
def test_every_command_answers_an_unknown_line_with_the_same_message_listing_the_known_ones(
        argv: list[str], paths: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = state(paths["root"])
    code, err = outcome(["--root", str(paths["root"]), *filled(argv, paths)], capsys)
    assert code == 1
    assert err.splitlines()[-1] == "error: unknown product line 'nosuch' (params.yaml lists: alpha)"
    assert state(paths["root"]) == before


# -- params.yaml: every problem is a ValueError naming the file and the key ------------------------

BAD_PARAMS = {
    # unknown keys
    "unknown top-level key": ("defualts: {}\n",
                              "unknown top-level keys ['defualts'] (expected defaults, lines)"),
    "unknown key in defaults": ("defaults: {modle: {}}\n",
                                "defaults.modle: unknown key (allowed here: model, data, thresholds, export,"
                                " gates, fit, production, promotion)"),
    "unknown key in a line": ("lines:\n  alpha: {dat: {}}\n",
                              "product line 'alpha': lines.alpha.dat: unknown key"),
    "unknown key in model": ("defaults:\n  model: {n_feature: 50}\n",
                             "defaults.model.n_feature: unknown key (allowed here: backbone, layers,"),
    "unknown key in a line's model": ("lines:\n  alpha: {model: {n_feature: 50}}\n",
                                      "lines.alpha.model.n_feature: unknown key"),
    "unknown key in data.split": ("defaults:\n  data: {split: {trian: 0.7}}\n",
                                  "defaults.data.split.trian: unknown key (allowed here: seed, train,"),
    "unknown key in gates": ("defaults:\n  gates: {floor: {image_auroc: 0.7}}\n",
                             "defaults.gates.floor: unknown key (allowed here: floors, pixel_floors,"
                             " ceilings, false_alarm_allowance, max_drop)"),
    "name as a key of a line": ("lines:\n  alpha: {name: beta}\n", "lines.alpha.name: unknown key"),
    "unknown gate metric": ("defaults:\n  gates: {floors: {auroc: 0.7}}\n",
                            "defaults.gates.floors: unknown metrics ['auroc']; gates can use ['image_auroc'"),
    "unknown gate metric in a line": ("lines:\n  alpha: {gates: {ceilings: {fpr: 0.1}}}\n",
                                      "lines.alpha.gates.ceilings: unknown metrics ['fpr']"),
    # wrong types
    "text for a whole number": ("defaults:\n  model: {n_features: many}\n",
                                "defaults.model.n_features: Input should be a valid integer (got 'many')"),
    "quoted number": ("defaults:\n  model: {n_features: '50'}\n",
                      "defaults.model.n_features: Input should be a valid integer (got '50')"),
    "fraction for a whole number": ("defaults:\n  data: {image_size: 128.5}\n",
                                    "defaults.data.image_size: Input should be a valid integer (got 128.5)"),
    "number for a boolean": ("defaults:\n  model: {align_maps: 1}\n",
                             "defaults.model.align_maps: Input should be a valid boolean (got 1)"),
    "boolean for a number": ("defaults:\n  model: {seed: true}\n",
                             "defaults.model.seed: Input should be a valid integer (got True)"),
    "text for a list": ("defaults:\n  model: {layers: layer1}\n",
                        "defaults.model.layers: Input should be a valid list (got 'layer1')"),
    "number for a section": ("defaults:\n  model: 5\n",
                             "defaults.model: expected a mapping of settings (got 5)"),
    "list for lines": ("lines: [alpha, beta]\n", "lines: expected a mapping of settings, got list"),
    "number for a line": ("lines:\n  alpha: 3\n", "lines.alpha: expected a mapping of settings, got int 3"),
    "unknown choice": ("defaults:\n  model: {pooling: everywhere}\n",
                       "defaults.model.pooling: Input should be 'per_position', 'neighbourhood' or 'shared'"
                       " (got 'everywhere')"),
    "unknown preset": ("lines:\n  alpha: {model: {preset: papr}}\n",
                       "lines.alpha.model: unknown preset 'papr'; presets: aligned, paper"),
    "unknown export dtype": ("defaults:\n  export: {dtype: int8}\n",
                             "defaults.export.dtype: Input should be 'float32' or 'float16' (got 'int8')"),
    "text for a boolean": ("defaults:\n  fit: {incremental: sometimes}\n",
                           "defaults.fit.incremental: Input should be a valid boolean (got 'sometimes')"),
    # impossible values
    "max_removed_share 0": ("defaults:\n  fit: {max_removed_share: 0}\n",
                            "defaults.fit.max_removed_share: Input should be greater than 0 (got 0)"),
    "min_kept_variance 1": ("lines:\n  alpha: {fit: {min_kept_variance: 1}}\n",
                            "lines.alpha.fit.min_kept_variance: Input should be less than 1 (got 1)"),
    "n_features 0": ("lines:\n  alpha: {model: {n_features: 0}}\n",
                     "lines.alpha.model.n_features: Input should be greater than 0 (got 0)"),
    "epsilon -1": ("defaults:\n  model: {epsilon: -1}\n",
                   "defaults.model.epsilon: Input should be greater than 0 (got -1)"),
    "top_k_percent 150": ("defaults:\n  model: {top_k_percent: 150}\n",
                          "defaults.model.top_k_percent: Input should be less than or equal to 100"
                          " (got 150)"),
    "pooling_window 2": ("defaults:\n  model: {pooling_window: 2}\n",
                         "defaults.model.pooling_window: Input should be greater than or equal to 3 (got 2)"),
    "pooling_window even": ("defaults:\n  model: {pooling_window: 4}\n",
                            "defaults.model.pooling_window: a window of positions has a centre only if odd:"
                            " got 4"),
    "split train 0.95 + validation 0.1": ("defaults:\n  data: {split: {train: 0.95, validation: 0.1}}\n",
                                          "defaults.data.split: split.train + split.validation = 1.05"
                                          " leaves no normal images for test"),
    "split sum across defaults and a line": ("defaults:\n  data: {split: {train: 0.8}}\n"
                                             "lines:\n  alpha: {data: {split: {validation: 0.3}}}\n",
                                             "lines.alpha.data.split: split.train + split.validation = 1.1"),
    "split share 1": ("defaults:\n  data: {split: {train: 1.0}}\n",
                      "defaults.data.split.train: Input should be less than 1 (got 1.0)"),
    "image_size 16": ("defaults:\n  data: {image_size: 16}\n",
                      "defaults.data.image_size: Input should be greater than or equal to 32 (got 16)"),
    "min_train_images 1": ("defaults:\n  data: {min_train_images: 1}\n",
                           "defaults.data.min_train_images: Input should be greater than or equal to 2"
                           " (got 1)"),
    "batch size 0": ("defaults:\n  data: {train_batch_size: 0}\n",
                     "defaults.data.train_batch_size: Input should be greater than 0 (got 0)"),
    "normal_quantile 1": ("defaults:\n  thresholds: {normal_quantile: 1.0}\n",
                          "defaults.thresholds.normal_quantile: Input should be less than 1 (got 1.0)"),
    "negative max_drop": ("defaults:\n  gates: {max_drop: -0.1}\n",
                          "defaults.gates.max_drop: Input should be greater than or equal to 0 (got -0.1)"),
    # line names
    "line name escaping data/": ("lines:\n  ../etc: {}\n",
                                 "lines.../etc: invalid product line name '../etc'"),
    "line name with a quote": ("lines:\n  \"x'\": {}\n", "invalid product line name \"x'\""),
    "line name a number": ("lines:\n  123: {}\n", "lines.123: a product line name must be text, got int 123"),
    # the file itself
    "key given twice": ("lines:\n  alpha: {}\n  alpha: {model: {n_features: 5}}\n",
                        "key 'alpha' is given twice\n  in \"{path}\", line 3"),
    "nested key given twice": ("defaults:\n  model:\n    seed: 1\n    seed: 2\n",
                               "key 'seed' is given twice"),
    "malformed YAML": ("defaults:\n  model: {n_features: 50\nlines: {}\n",
                       "cannot read {path}: while parsing a flow mapping\n  in \"{path}\", line 2"),
    "tab indentation": ("defaults:\n\tmodel: {}\n", "cannot read {path}: while scanning for the next token"),
    "a list, not a mapping": ("- defaults\n- lines\n",
                              "{path}: expected a mapping with keys defaults and lines, got list"),
    "plain text": ("just some text\n",
                   "expected a mapping with keys defaults and lines, got str 'just some text'"),
}


@pytest.mark.parametrize(("text", "words"), BAD_PARAMS.values(), ids=list(BAD_PARAMS))
def test_a_bad_params_yaml_is_refused_naming_the_file_and_key(text: str, words: str, tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(text)
    with pytest.raises(ValueError) as error:
        load_params(path)
    message = str(error.value)
    assert str(path) in message
    assert words.replace("{path}", str(path)) in message
    assert "errors.pydantic.dev" not in message, "one line per problem, not pydantic's report"


def test_a_params_yaml_that_is_not_text_is_refused_naming_the_file(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_bytes(b"defaults:\n  model: {backbone: \xff\xfe}\n")
    with pytest.raises(ValueError, match=f"cannot read {path}: 'utf-8' codec can't decode"):
        load_params(path)


def test_a_missing_params_yaml_is_named(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=f"{tmp_path / 'params.yaml'} does not exist"):
        load_params(tmp_path / "params.yaml")


def test_numbers_as_yaml_1_2_reads_them_and_merge_keys_are_not_duplicates(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text("defaults: &base\n  model: {epsilon: 1e-3, n_features: 50}\n"
                    "lines:\n  alpha:\n    <<: *base\n    model: {n_features: 20}\n")
    alpha = load_params(path).line("alpha")
    assert alpha.model.epsilon == 0.001 and alpha.model.n_features == 20


def test_an_empty_params_yaml_means_defaults_and_no_lines(tmp_path: Path,
                                                          capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", "")
    assert load_params(root / "params.yaml").lines == {}
    code, err = outcome(["--root", str(root), "retrain"], capsys)
    assert code == 1 and f"{root / 'params.yaml'} lists no product lines" in err
    source = write_mvtec_folder(tmp_path / "source", 16, 2, 2, n_validation=5)  # enough for the defaults
    assert main(["--root", str(root), "data", "add", "alpha", str(source)]) == 0  # the first line registers
    assert list(load_params(root / "params.yaml").lines) == ["alpha"]


@pytest.fixture(scope="module")
def broken(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A project whose committed params.yaml has a typo in a line's model section."""
    base = tmp_path_factory.mktemp("broken")
    root = base / "project"
    init_project(root, base / "remote", "defaults: {}\nlines:\n  alpha:\n    model: {n_feature: 50}\n")
    return {"root": root, "source": write_mvtec_folder(base / "source", 5, 2, 2, n_validation=1)}


BROKEN_COMMANDS = {
    "data add": ["data", "add", "alpha", "{source}"],
    "data validate": ["data", "validate", "{source}"],
    "data demo": ["data", "demo"],
    "retrain": ["retrain"],
    "retrain a line": ["retrain", "alpha"],
    "tune": ["tune", "alpha"],
}


@pytest.mark.parametrize("argv", BROKEN_COMMANDS.values(), ids=list(BROKEN_COMMANDS))
def test_a_bad_params_yaml_stops_every_command_that_reads_it_before_any_work(
        argv: list[str], broken: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    before = state(broken["root"])
    code, err = outcome(["--root", str(broken["root"]), *filled(argv, broken)], capsys)
    assert code == 1
    assert f"error: {broken['root'] / 'params.yaml'}: product line 'alpha': lines.alpha.model.n_feature:" \
           " unknown key" in err
    assert state(broken["root"]) == before
    assert not (broken["root"] / "data").exists()

