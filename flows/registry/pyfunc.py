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

Production log (opt-in): with ``PADIM_SCORE_LOG`` set to a folder or URI where the server runs,
every scored image becomes a row of the line's log (padim_plugin.score_log), its source the
request's ``source`` param (else "rest"), its model version ``PADIM_MODEL_VERSION`` (else the
model's run, "run:<id>"); ``PADIM_SCORE_LOG_IMAGES=1`` keeps the images too. Rows are written when
64 wait or the oldest has waited 10 s (checked as requests arrive), and when the server stops.
A row that cannot be written stays waiting for the next write and the reply goes out regardless,
with a warning in the server's log.
"""

from __future__ import annotations

import atexit
import logging
import os
import signal
import threading
from pathlib import Path
from typing import Any

import mlflow
from mlflow.exceptions import MlflowException
from mlflow.protos.databricks_pb2 import INVALID_PARAMETER_VALUE

from padim_plugin.artifact import load_artifact, read_manifest
from padim_plugin.score_log import ScoreLog, ScoreLogWriter, scored_rows
from padim_plugin.scoring import check_map_request, decode_payload, raw_image_threshold, score_images

LOG_ENV, KEEP_IMAGES_ENV, VERSION_ENV = "PADIM_SCORE_LOG", "PADIM_SCORE_LOG_IMAGES", "PADIM_MODEL_VERSION"


class PadimPyfunc(mlflow.pyfunc.PythonModel):
    """Loads the artifact folder named ``model``; scores batches of images."""

    # predict has no type hints on purpose (its docstring says why): MLflow skips looking for them,
    # and warning each time the class is loaded that they are missing, as for its own models
    _skip_type_hint_validation = True

    def load_context(self, context: Any) -> None:
        folder = Path(context.artifacts["model"])
        self.model = load_artifact(folder)
        self.log: ScoreLogWriter | None = None
        if os.environ.get(LOG_ENV):
            metadata = read_manifest(folder).get("metadata", {})
            self.log = ScoreLogWriter(ScoreLog(os.environ[LOG_ENV]), metadata["line"], batch_rows=64,
                                      max_wait_s=10)
            self.data_rev = metadata.get("data_md5", "")
            self.version = os.environ.get(VERSION_ENV) or _run_of(folder)
            self.threshold = raw_image_threshold(self.model)
            self.keep_images = os.environ.get(KEEP_IMAGES_ENV) == "1"
            atexit.register(self.log.close)
            _write_through_when_stopped(self.log)

    def predict(self, context, model_input, params=None):
        """Bad input is the client's error (HTTP 400 from the server) with a message naming the item.
        No type hints: MLflow would validate the input against them, and no hint says "pixels or
        encoded images" (the signature is logged explicitly)."""
        del context
        params = params or {}
        anomaly_map, map_size = params.get("anomaly_map", "none"), params.get("map_size") or None
        try:
            check_map_request(anomaly_map, map_size)
            images = decode_payload(model_input)
            reply = score_images(self.model, images, anomaly_map, map_size)
        except ValueError as error:  # ImageDecodeError included
            raise MlflowException(str(error), error_code=INVALID_PARAMETER_VALUE) from None
        if self.log is not None:
            sources = [params.get("source") or "rest"] * len(images)
            rows = scored_rows(images, sources, reply["pred_score"], reply["pred_label"], self.version,
                               self.data_rev, self.threshold, self.keep_images)
            try:
                self.log.add(rows)
            except Exception as error:  # the images were scored: the client gets its reply
                logging.getLogger(__name__).warning("production log %s: rows wait, not written: %s",
                                                    self.log.log.location, error)
        return reply


def _write_through_when_stopped(log: ScoreLogWriter) -> None:
    """On SIGTERM or SIGINT, write the waiting rows and every later one at once, then pass the
    signal on. The model loads before uvicorn takes the signals over; uvicorn finishes its requests,
    gives the signals back to this handler and raises the signal again, which by default would end
    the process without running atexit handlers."""
    if threading.current_thread() is not threading.main_thread():
        return  # only the main thread may set handlers; atexit still covers a normal exit
    for stop in (signal.SIGTERM, signal.SIGINT):
        passed_on = signal.getsignal(stop)
        if passed_on is signal.SIG_IGN:
            continue  # an ignored signal stops nothing

        def handler(number: int, frame: Any, passed_on: Any = passed_on) -> None:
            log.write_through()
            if callable(passed_on):
                passed_on(number, frame)
            else:
                signal.signal(number, signal.SIG_DFL if passed_on is None else passed_on)
                signal.raise_signal(number)

        signal.signal(stop, handler)


def _run_of(folder: Path) -> str:
    """"run:<id>" of the MLflow model whose artifacts hold ``folder``, or "" if it says none."""
    for parent in folder.parents:
        if (parent / "MLmodel").is_file():
            run_id = mlflow.models.Model.load(str(parent)).run_id
            return f"run:{run_id}" if run_id else ""
    return ""


mlflow.models.set_model(PadimPyfunc())
