"""The MLflow pyfunc of a registered line model, logged as models-from-code: MLflow stores this
file, not a pickle, and runs it on load. It needs ``padim_plugin`` and MLflow only (not ``flows``,
Prefect or DVC), and loads the model artifact (safetensors + manifest) that ``padim_plugin.artifact``
wrote: data, never code.

Input: uint8 images (N, H, W, 3), RGB; grey images may come as (N, H, W). Output: ``pred_score``
(N,) normalised so that the validation threshold sits at 0.5, ``pred_label`` (N,) 0/1, and
``anomaly_map`` (N, H, W) at the input's size.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
import numpy as np

from padim_plugin.artifact import load_artifact
from padim_plugin.scoring import score_arrays


class PadimPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the artifact folder named ``model``; scores batches of images."""

    def load_context(self, context: Any) -> None:  # noqa: ANN401
        self.model = load_artifact(Path(context.artifacts["model"]))

    def predict(self, context: Any, model_input: np.ndarray, params: dict | None = None) -> dict:  # noqa: ANN401
        del context, params
        return score_arrays(self.model, model_input)


mlflow.models.set_model(PadimPyfunc())
