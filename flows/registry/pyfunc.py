"""The MLflow pyfunc of a registered line model, logged as models-from-code: MLflow stores this
file, not a pickle, and runs it on load. It needs ``padim_plugin`` and MLflow only (not ``flows``,
Prefect or DVC), and loads the model artifact (safetensors + manifest) that ``padim_plugin.artifact``
wrote: data, never code.

Input (no input schema, so that both kinds pass MLflow's server): pixels, an integer array
(N, H, W, 3) RGB or (N, H, W) grey of 0..255; or encoded images (base64 PNG/JPEG/...) as an
``image`` column of a DataFrame, an ``image`` key, or an array of strings. Output: ``pred_score``
(N,) normalised so that the validation threshold sits at 0.5 and ``pred_label`` (N,) 0/1; the maps
only when the request's params ask (``{"params": {"anomaly_map": "png", "map_size": 64}}``; values:
``padim_plugin.scoring.MAP_FORMATS``), as ``anomaly_map`` values or ``anomaly_map_png``.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from padim_plugin.artifact import load_artifact
from padim_plugin.scoring import score_payload


class PadimPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the artifact folder named ``model``; scores batches of images."""

    # predict has no type hints on purpose (its docstring says why): MLflow skips looking for them,
    # and warning each time the class is loaded that they are missing, as for its own models
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        self.model = load_artifact(Path(context.artifacts["model"]))

    def predict(self, context, model_input, params=None):
        """Bad input is the client's error (HTTP 400 from the server) with a message naming the item.
        No type hints: MLflow would validate the input against them, and no hint says "pixels or
        encoded images" (the signature is logged explicitly)."""
        del context
        params = params or {}
        try:
            return score_payload(self.model, model_input, params.get("anomaly_map", "none"),
                                 params.get("map_size") or None)
        except ValueError as error:  # ImageDecodeError included
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None


mlflow.models.set_model(PadimPyfunc())
