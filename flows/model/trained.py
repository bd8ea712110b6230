"""One fit's outcome as the retrain flow hands it on: files, scores and how it was fitted.

Its own module so that the flow (which makes it) and the registry (which logs it) share it
without importing each other.
"""

from __future__ import annotations

from dataclasses import dataclass, field

REFERENCE_ARTIFACT = "monitoring/reference.json"  # the run artifact holding TrainedModel.reference


@dataclass
class TrainedModel:
    """Files and scores of one fit; they live under .padim/runs/<cache key>/."""

    cache_key: str
    model_path: str
    metrics: dict[str, float]  # test metrics, and the rates the threshold gave on validation
    unavailable: dict[str, str]  # metric -> why the test split cannot give it
    calibration: dict[str, float | str]  # thresholds and normalisation, from validation only
    figures: dict[str, str]
    fit: dict[str, str] = field(default_factory=dict)  # flows.model.incremental.FitReport: path taken, images
    statistics_path: str = ""  # the kept statistics (.padim/statistics/<cache key>)
    unsupported: str = ""  # why validation cannot support the line's operating point ("" if it can)
    reference: dict = field(default_factory=dict)  # flows.monitor.reference, what production is compared with
