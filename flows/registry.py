"""The one module that writes to MLflow: runs, model versions, tags and the champion alias.

One registered model per product line, ``padim-<line>``. Every new version gets ``@challenger``;
``@champion`` moves only through :meth:`Registry.promote` / :meth:`Registry.rollback`, whose tags
are written first and whose single alias move comes last, so a failure at any point leaves the
previous champion in place.
"""

from __future__ import annotations

import getpass
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import mlflow
import numpy as np
from mlflow import MlflowClient
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException

from .config import LineParams
from .data import DataVersion

CHAMPION, CHALLENGER = "champion", "challenger"
TAG = "padim."
PACKAGES = ("padim-plugin", "anomalib", "torch", "torchvision", "timm", "lightning", "safetensors", "mlflow",
            "prefect", "dvc")
# what loading and scoring a model imports; padim-plugin itself is installed from this project
SCORING_PACKAGES = ("anomalib", "torch", "torchvision", "timm", "lightning", "safetensors", "mlflow")
PYFUNC_CODE = Path(__file__).with_name("pyfunc.py")
TUNING_TABLE = "tuning/grid.json"


def tracking_uri(root: Path) -> str:
    """MLFLOW_TRACKING_URI when set, else a SQLite store in the project folder."""
    return os.environ.get("MLFLOW_TRACKING_URI") or f"sqlite:///{Path(root).resolve() / 'mlflow.db'}"


def model_name(line: str) -> str:
    return f"padim-{line}"


class PickledModelError(ValueError):
    """A registered version whose pyfunc is a pickle: refused rather than loaded."""


@dataclass(frozen=True)
class Candidate:
    """A registered model version and the run that produced it."""

    version: str
    run_id: str
    decided: bool  # already gated before (a re-run that reused a cached fit)
    decision: str | None = None


class Registry:
    def __init__(self, root: Path, uri: str | None = None) -> None:
        self.root = Path(root).resolve()
        self.uri = uri or tracking_uri(self.root)
        mlflow.set_tracking_uri(self.uri)
        mlflow.set_registry_uri(self.uri)
        self.client = MlflowClient(tracking_uri=self.uri, registry_uri=self.uri)

    # -- reading -------------------------------------------------------------------------------
    def champion(self, line: str) -> ModelVersion | None:
        return self.alias(line, CHAMPION)

    def challenger(self, line: str) -> ModelVersion | None:
        return self.alias(line, CHALLENGER)

    def alias(self, line: str, alias: str) -> ModelVersion | None:
        try:
            return self.client.get_model_version_by_alias(model_name(line), alias)
        except MlflowException:
            return None

    def version(self, line: str, version: str) -> ModelVersion:
        try:
            return self.client.get_model_version(model_name(line), str(version))
        except MlflowException as error:
            raise KeyError(f"{model_name(line)} has no version {version}") from error

    def run_metrics(self, run_id: str) -> dict[str, float]:
        return dict(self.client.get_run(run_id).data.metrics)

    def find_by_cache_key(self, line: str, cache_key: str) -> ModelVersion | None:
        try:
            found = self.client.search_model_versions(
                f"name = '{model_name(line)}' and tags.`{TAG}cache_key` = '{cache_key}'"
            )
        except MlflowException:
            return None
        return max(found, key=lambda v: int(v.version)) if found else None

    def load_model(self, line: str, version: str) -> Any:  # noqa: ANN401
        """The StreamingPadim inside a registered pyfunc (refused if the pyfunc is a pickle)."""
        self.require_data_only(line, version)
        pyfunc = mlflow.pyfunc.load_model(f"models:/{model_name(line)}/{version}")
        return pyfunc.unwrap_python_model().model

    def require_data_only(self, line: str, version: str) -> None:
        """Raise PickledModelError if the version's pyfunc was logged as a pickled Python object
        (as padim-plugin did before its data-only format): loading it would run its code. Read
        from the version's MLmodel file, which loading itself would follow, not from a tag."""
        info = mlflow.models.get_model_info(f"models:/{model_name(line)}/{version}")
        if "python_model" in info.flavors.get("python_function", {}):
            msg = (f"{model_name(line)} v{version} is a pickled model (registered before the data-only"
                   " format); it is not loaded, since loading it would run its code")
            raise PickledModelError(msg)

    def run_link(self, run_id: str) -> str:
        run = self.client.get_run(run_id)
        if self.uri.startswith("http"):
            return f"{self.uri.rstrip('/')}/#/experiments/{run.info.experiment_id}/runs/{run_id}"
        return f"run {run_id} (mlflow ui --backend-store-uri {self.uri})"

    # -- writing -------------------------------------------------------------------------------
    def log_candidate(
        self,
        params: LineParams,
        data: DataVersion,
        metrics: dict[str, float],
        unavailable: dict[str, str],
        calibration: dict[str, float | str],
        model_path: Path,
        figures: dict[str, Path],
        cache_key: str,
        code_version: str,
    ) -> Candidate:
        """Log a run (params with the validation calibration, metrics with the reasons any are
        missing, lineage tags, figures, pyfunc model) and register it as ``@challenger``.
        Idempotent: a fit already registered under ``cache_key`` is returned."""
        line = params.name
        existing = self.find_by_cache_key(line, cache_key)
        if existing is not None:
            decision = existing.tags.get(f"{TAG}decision")
            return Candidate(str(existing.version), existing.run_id, decision is not None, decision)
        tags = self._lineage_tags(data, cache_key, code_version)
        run_name = f"{line}-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=self._experiment(line), run_name=run_name) as run:
            mlflow.log_params(params.flat() | calibration)
            mlflow.log_metrics({k: v for k, v in metrics.items() if np.isfinite(v)})
            mlflow.set_tags(tags)
            mlflow.log_dict({"metrics": metrics, "unavailable": unavailable}, "metrics.json")
            for figure in figures.values():
                mlflow.log_artifact(str(figure), "figures")
            info = mlflow.pyfunc.log_model(
                name="model",
                python_model=str(PYFUNC_CODE),  # models-from-code: a file, not a pickle
                artifacts={"model": str(model_path)},
                pip_requirements=_pip_requirements(),
                signature=_signature(),
                input_example=_example_images(params.data.image_size),
            )
        version = mlflow.register_model(info.model_uri, model_name(line), tags=tags)
        self.client.set_registered_model_alias(model_name(line), CHALLENGER, version.version)
        return Candidate(str(version.version), run.info.run_id, decided=False)

    def log_tuning(self, line: str, data: DataVersion, grid: list[dict[str, Any]], winner: dict[str, Any],
                   scores: dict[str, float]) -> str:
        """Log a tuning run to the line's experiment: the grid as a table, the winner's options as
        params and its validation ``scores`` as metrics."""
        import pandas as pd

        run_name = f"{line}-tune-{data.md5[:8]}"
        with mlflow.start_run(experiment_id=self._experiment(line), run_name=run_name) as run:
            mlflow.set_tags({f"{TAG}kind": "tuning", f"{TAG}data_md5": data.md5,
                             f"{TAG}data_rev": data.rev or "", f"{TAG}git_commit": _git_commit(self.root)})
            mlflow.log_params({f"best.{key}": value for key, value in winner.items()})
            best = {f"best_{name}": value for name, value in scores.items()}
            mlflow.log_metrics({"grid_points": len(grid)} | best)
            mlflow.log_table(pd.DataFrame(grid), artifact_file=TUNING_TABLE)
        return run.info.run_id

    def record_decision(self, line: str, version: str, promote: bool, reason: str) -> None:
        """Tag the gate's verdict on the version; move ``@champion`` to it only if it passed."""
        if promote:
            self.promote(line, version, reason)
        else:
            self._tag(line, version, decision=CHALLENGER, reason=reason)

    def promote(self, line: str, version: str, reason: str) -> None:
        self.version(line, version)  # fails clearly on an unknown version, before any write
        current = self.champion(line)
        previous = str(current.version) if current is not None else ""
        if previous == str(version):
            return
        self._tag(line, version, decision=CHAMPION, reason=reason, previous_champion=previous)
        self.client.set_registered_model_alias(model_name(line), CHAMPION, str(version))  # the commit point

    def rollback(self, line: str) -> str:
        """Give ``@champion`` back to the version it replaced; returns that version."""
        current = self.champion(line)
        if current is None:
            raise KeyError(f"{model_name(line)} has no champion to roll back")
        previous = current.tags.get(f"{TAG}previous_champion")
        if not previous:
            raise KeyError(f"{model_name(line)} v{current.version} replaced no earlier champion")
        self._tag(line, str(current.version), decision="rolled back", reason=f"rolled back to v{previous}")
        self.client.set_registered_model_alias(model_name(line), CHAMPION, previous)
        return previous

    def _tag(self, line: str, version: str, **tags: str) -> None:
        for key, value in tags.items():
            self.client.set_model_version_tag(model_name(line), str(version), f"{TAG}{key}", value)

    def _experiment(self, line: str) -> str:
        name = f"padim/{line}"
        experiment = self.client.get_experiment_by_name(name)
        if experiment is not None:
            return experiment.experiment_id
        location = None
        if self.uri.startswith("sqlite:"):
            location = (self.root / "mlartifacts" / line).as_uri()
        return self.client.create_experiment(name, artifact_location=location)

    def _lineage_tags(self, data: DataVersion, cache_key: str, code_version: str) -> dict[str, str]:
        return {
            f"{TAG}code_version": code_version,
            f"{TAG}data_md5": data.md5,
            f"{TAG}data_rev": data.rev or "",
            f"{TAG}git_commit": _git_commit(self.root),
            f"{TAG}cache_key": cache_key,
            f"{TAG}packages": json.dumps(_package_versions()),
            f"{TAG}registered_by": getpass.getuser(),
        }


def _pip_requirements() -> list[str]:
    """What scoring a registered model needs: padim-plugin's own dependencies, pinned as installed."""
    return [f"{name}=={version}" for name, version in _package_versions().items()
            if name in SCORING_PACKAGES]


def _example_images(size: int) -> np.ndarray:
    return np.random.default_rng(0).integers(0, 256, (1, size, size, 3), dtype=np.uint8)


def _signature():  # noqa: ANN202
    """Named outputs; no input schema, since one cannot say "uint8 pixels or encoded images"."""
    from mlflow.models import ModelSignature
    from mlflow.types import Schema, TensorSpec

    return ModelSignature(
        inputs=None,  # pixels or encoded images: flows/pyfunc.py checks and decodes either
        outputs=Schema([
            TensorSpec(np.dtype(np.float32), (-1,), "pred_score"),
            TensorSpec(np.dtype(np.int64), (-1,), "pred_label"),
            TensorSpec(np.dtype(np.float32), (-1, -1, -1), "anomaly_map"),
        ]),
    )


def _package_versions() -> dict[str, str]:
    from padim_plugin.artifact import package_versions

    return package_versions(*PACKAGES)


def _git_commit(root: Path) -> str:
    import subprocess

    result = subprocess.run(["git", "rev-parse", "HEAD"], cwd=root, capture_output=True, text=True)
    return result.stdout.strip() if result.returncode == 0 else "unknown"
