"""A fit's kept statistics in MLflow: downloaded by a machine that lacks them, and deleted from the
runs of versions a next fit would not continue from (flows.model.incremental keeps them on disk).
"""

from __future__ import annotations

import logging
import tempfile
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.store.artifact.artifact_repository_registry import get_artifact_repository

from ..model.incremental import StatisticsStore
from .registry import KEPT, STATISTICS_ARTIFACTS, TAG, Registry, model_name

log = logging.getLogger(__name__)


def fetch_statistics(registry: Registry, line: str, config: str, store: StatisticsStore) -> list[str]:
    """Download into ``store`` the kept statistics of the line's champion and latest version
    that have this statistics config and that ``store`` lacks (fitted on another machine);
    returns their cache keys."""
    fetched = []
    for version in _statistics_behind(registry, line):
        key = version.tags.get(f"{TAG}cache_key", "")
        if (version.tags.get(f"{TAG}statistics") != KEPT or store.get(key) is not None
                or version.tags.get(f"{TAG}statistics_config") != config):
            continue
        store.root.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryDirectory(prefix=".download-", dir=store.root) as folder:
            try:
                path = mlflow.artifacts.download_artifacts(run_id=version.run_id, dst_path=folder,
                                                           artifact_path=STATISTICS_ARTIFACTS,
                                                           tracking_uri=registry.uri)
            except (MlflowException, OSError) as error:
                log.warning("%s v%s: its kept statistics cannot be downloaded: %s", line, version.version,
                            error)
                continue
            store.adopt(key, Path(path))
            fetched.append(key)
    return fetched

def collect_statistics(registry: Registry, line: str, store: StatisticsStore) -> int:
    """Keep statistics only behind the line's champion and latest version: the others are
    deleted from ``store`` and from their runs' artifacts (their versions tagged so). Returns
    the bytes freed in ``store``."""
    behind = _statistics_behind(registry, line)
    freed = store.collect_garbage(line, {version.tags.get(f"{TAG}cache_key", "") for version in behind})
    keep = {str(version.version) for version in behind}
    kept = registry.client.search_model_versions(
        f"name = '{model_name(line)}' and tags.`{TAG}statistics` = '{KEPT}'")
    for version in kept:
        if str(version.version) in keep:
            continue
        artifact_uri = registry.client.get_run(version.run_id).info.artifact_uri
        try:
            get_artifact_repository(artifact_uri).delete_artifacts(STATISTICS_ARTIFACTS)
        except (MlflowException, OSError) as error:
            log.warning("%s v%s: its kept statistics cannot be deleted: %s", line, version.version, error)
            continue
        registry.note_on_version(line, str(version.version), statistics="deleted")
    return freed

def _statistics_behind(registry: Registry, line: str) -> list[ModelVersion]:
    """The line's champion and latest version (the fits a next fit would continue from)."""
    found = registry.client.search_model_versions(f"name = '{model_name(line)}'")
    latest = max(found, key=lambda version: int(version.version), default=None)
    champion = registry.champion(line) if found else None
    return list({str(v.version): v for v in (champion, latest) if v is not None}.values())
