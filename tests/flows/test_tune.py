"""padim-mlops tune: options scored on validation only, logged to MLflow, the best written back."""

from __future__ import annotations

import json
from pathlib import Path

import mlflow
import numpy as np
import pytest
import torch
import yaml
from sklearn.metrics import roc_auc_score

from flows.cli import main
from flows.config import LineParams, load_params, set_line_model_options
from flows.registry.registry import TUNING_TABLE, Registry
from flows.tune import GridPoint, auroc_standard_error, best, grid_size, score_options
from padim_plugin import StreamingPadimModel

from ..mtd import load_images
from ..projects import init_project
from ..synthetic import write_mvtec_folder

PARAMS = """\
# a project's own comment, which tuning must keep
defaults:
  model: {n_features: 16}   # small and fast
  data: {image_size: 64, train_batch_size: 4, eval_batch_size: 8, min_train_images: 5,
         min_validation_images: 2}
lines:
  alpha: {}
  beta:
    data: {image_size: 64}  # untouched by tuning alpha
"""
LINE = LineParams(name="alpha", model={"n_features": 16},
                  data={"image_size": 64, "train_batch_size": 4, "eval_batch_size": 8})
TUNED_KEYS = {"layers", "channel_reduction", "align_maps", "pooling", "pooling_window", "top_k_percent"}
IMAGENET_MEAN, IMAGENET_STD = torch.tensor([0.485, 0.456, 0.406]), torch.tensor([0.229, 0.224, 0.225])



def tensors(paths: list[Path]) -> torch.Tensor:
    """Images as the model sees them at the line's size: 0..1, ImageNet-normalised."""
    images = torch.from_numpy(load_images(paths, LINE.data.image_size))
    return (images - IMAGENET_MEAN[:, None, None]) / IMAGENET_STD[:, None, None]


def test_the_grid_is_scored_on_validation_without_reading_a_test_image(tmp_path: Path) -> None:
    line = write_mvtec_folder(tmp_path / "line", 10, 3, 3, n_validation=4)
    for image in (line / "test").rglob("*.png"):
        image.write_bytes(b"not an image")  # reading any test image would fail the run
    grid = score_options(LINE, line, tmp_path / "work")
    assert len(grid) == grid_size(LINE)
    assert len({json.dumps(point.options, sort_keys=True) for point in grid}) == grid_size(LINE)
    # the paper's point, against a pure-torch fit on the train images scored on validation
    model = StreamingPadimModel(n_features=16).fit(tensors(sorted((line / "train").rglob("*.png"))).split(4))
    validation = sorted((line / "validation").rglob("*.png"))
    labels = [0 if path.parent.name == "good" else 1 for path in validation]
    with torch.no_grad():
        scores = model.eval()(tensors(validation)).pred_score.flatten().numpy()
    paper = next(point for point in grid if point.options == {
        "layers": None, "channel_reduction": "random_subset", "align_maps": False, "pooling": "per_position",
        "pooling_window": 3, "top_k_percent": None})
    assert paper.image_auroc == pytest.approx(roc_auc_score(labels, scores), abs=1e-9)


def test_auroc_standard_error_is_hanley_and_mcneils() -> None:
    # A = 0.75, 10 defects, 20 normals: Q1 = 0.6, Q2 = 0.642857; variance = (0.1875 + 9 * 0.0375
    # + 19 * 0.080357) / 200 = 0.0102589, by hand
    assert auroc_standard_error(0.75, 10, 20) == pytest.approx(0.0102589**0.5, rel=1e-4)
    assert auroc_standard_error(1.0, 10, 20) == 0.0


def test_the_earliest_option_within_one_standard_error_of_the_best_wins() -> None:
    paper, better, best_by_luck = (GridPoint({"name": name}, auroc, 0.05, None) for name, auroc in
                                   (("paper", 0.80), ("better", 0.86), ("luckiest", 0.90)))
    assert best([paper, better, best_by_luck]).options == {"name": "better"}  # 0.86 >= 0.90 - 0.05
    assert best([paper, GridPoint({"name": "close"}, 0.84, 0.05, None)]).options == {"name": "paper"}


def test_a_validation_split_without_defects_is_refused_by_name(tmp_path: Path) -> None:
    line = write_mvtec_folder(tmp_path / "line", 10, 3, 3, n_validation=4)
    for image in (line / "validation" / "spot").glob("*.png"):
        image.unlink()
    with pytest.raises(ValueError, match=r"alpha: .* 4 normal and 0 defect images"):
        score_options(LINE, line, tmp_path / "work")


def test_tune_logs_the_grid_and_writes_the_best_into_the_lines_entry(
        tmp_path: Path, prefect_harness: None, capsys: pytest.CaptureFixture[str]) -> None:
    root = tmp_path / "project"
    init_project(root, tmp_path / "remote", PARAMS)
    assert main(["--root", str(root), "data", "add", "alpha",
                 str(write_mvtec_folder(tmp_path / "alpha", 10, 3, 3, n_validation=4))]) == 0
    assert main(["--root", str(root), "tune", "alpha"]) == 0
    assert "best on validation" in capsys.readouterr().out

    text = (root / "params.yaml").read_text()
    assert "# a project's own comment" in text and "# untouched by tuning alpha" in text
    written = yaml.safe_load(text)["lines"]["alpha"]["model"]
    assert set(written) == TUNED_KEYS
    assert load_params(root / "params.yaml").line("alpha").model.pooling == written["pooling"]
    assert yaml.safe_load(text)["lines"]["beta"] == {"data": {"image_size": 64}}

    registry = Registry(root)
    run = mlflow.search_runs(experiment_names=["padim/alpha"], filter_string="tags.`padim.kind` = 'tuning'",
                             output_format="list")[0]
    table = json.loads(Path(registry.client.download_artifacts(run.info.run_id, TUNING_TABLE, str(tmp_path)))
                       .read_text())
    rows = [{key: None if isinstance(value, float) and np.isnan(value) else value
             for key, value in zip(table["columns"], values, strict=True)} for values in table["data"]]
    assert len(rows) == grid_size(LINE)
    # the one-standard-error rule, applied here to the logged table
    top = max(rows, key=lambda row: row["validation_image_auroc"])
    cut = top["validation_image_auroc"] - top["validation_image_auroc_se"]
    chosen = next(row for row in rows if row["validation_image_auroc"] >= cut)
    assert {key: chosen[key] for key in TUNED_KEYS} == written
    assert {key.removeprefix("best."): value for key, value in run.data.params.items()} == {
        key: str(value) for key, value in written.items()}


def test_tuned_options_that_do_not_validate_leave_params_yaml_as_it_was(tmp_path: Path) -> None:
    path = tmp_path / "params.yaml"
    path.write_text(PARAMS)
    with pytest.raises(ValueError, match="pooling"):
        set_line_model_options(path, "alpha", {"pooling": "everywhere"})
    assert path.read_text() == PARAMS
    with pytest.raises(KeyError, match="'gamma'"):
        set_line_model_options(path, "gamma", {"pooling": "shared"})
    assert path.read_text() == PARAMS
