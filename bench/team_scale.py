"""24 small product lines retrained through the team stack's Dask cluster (2 workers, then 1), and
on the embedded SQLite default with ``--parallel 4``: wall time, failed lines, summary complete.

Starts the stack (``stack/stack.py up``, as ``make stack-up``) in a scratch folder, adds the lines
(synthetic, 64 px, 16 channels: the flows' cost, not the model's) to a project whose DVC remote is
the stack's S3, runs ``padim-mlops retrain --dask-address`` with both workers, retires one and runs
again on fresh line names (so nothing is reused), then the same lines on a project of its own with
MLflow on SQLite and Prefect's ephemeral API. Stops the stack at the end::

    .venv/bin/python bench/team_scale.py [--lines 24]
"""

from __future__ import annotations

import argparse
import contextlib
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))  # tests/ is not an installed package
from stack.stack import read_env_file  # noqa: E402
from tests.conftest import write_mvtec_folder  # noqa: E402
from tests.projects import git, init_project, tiny_params  # noqa: E402

STACK = [sys.executable, str(ROOT / "stack" / "stack.py")]


@contextlib.contextmanager
def team_stack(state: Path) -> Iterator[dict[str, str]]:
    subprocess.run([*STACK, "up", "--state", str(state)], check=True, cwd=ROOT, stdout=subprocess.DEVNULL)
    try:
        yield read_env_file(state / "stack.env")
    finally:
        stopped = subprocess.run([*STACK, "down", "--state", str(state)], cwd=ROOT, capture_output=True,
                                 text=True)
        if stopped.returncode:
            print(f"stack down: {stopped.stdout}{stopped.stderr}", file=sys.stderr)


def make_project(root: Path, lines: list[str], remote: str, env: dict[str, str]) -> None:
    init_project(root, remote, tiny_params(*lines))
    if remote.startswith("s3://"):
        dvc = str(Path(sys.executable).parent / "dvc")
        subprocess.run([dvc, "remote", "modify", "default", "endpointurl", env["AWS_ENDPOINT_URL"]], cwd=root,
                       check=True, env=env)
        git(root, "commit", "-qam", "DVC remote on the team's S3")
    for seed, line in enumerate(lines):
        source = write_mvtec_folder(root.parent / "sources" / line, 8, 4, 4, seed=seed, n_validation=4)
        add = [sys.executable, "-m", "flows.cli", "--root", str(root), "data", "add", line, str(source),
               "--create-remote"]  # a fresh prefix of the bucket per run
        subprocess.run(add, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)


def retrain(root: Path, env: dict[str, str], *options: str) -> tuple[float, str, int]:
    """Wall time, output and exit code of ``padim-mlops retrain`` in its own process."""
    started = time.perf_counter()
    done = subprocess.run([sys.executable, "-m", "flows.cli", "--root", str(root), "retrain", *options],
                          cwd=ROOT, env=env, capture_output=True, text=True)
    return time.perf_counter() - started, done.stdout + done.stderr, done.returncode


def summary(name: str, lines: list[str], seconds: float, output: str, code: int) -> dict[str, object]:
    rows = [row for row in output.splitlines() if row.startswith("| ") and row.split("|")[1].strip() in lines]
    failed = [row.split("|")[1].strip() for row in rows if "FAILED" in row]
    return {"run": name, "seconds": seconds, "rows": len({row.split("|")[1] for row in rows}),
            "failed": failed, "exit": code, "locked": "database is locked" in output}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--lines", type=int, default=24)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory(prefix="padim-team-scale-") as scratch:
        base = Path(scratch)
        with team_stack(base / "stack") as stack:
            env = os.environ | stack
            from dask.distributed import Client

            for workers, prefix in ((2, "w2"), (1, "w1")):
                lines = [f"{prefix}-{i:02d}" for i in range(args.lines)]
                project = base / f"team-{prefix}" / "project"
                make_project(project, lines, f"s3://padim/dvc/{prefix}", env)
                with Client(stack["DASK_SCHEDULER_ADDRESS"]) as client:
                    if len(client.scheduler_info()["workers"]) > workers:
                        client.retire_workers(n=len(client.scheduler_info()["workers"]) - workers)
                    assert len(client.scheduler_info()["workers"]) == workers
                seconds, output, code = retrain(project, env, "--dask-address",
                                                stack["DASK_SCHEDULER_ADDRESS"])
                results.append(summary(f"Dask, {workers} worker(s)", lines, seconds, output, code))
        local_env = {k: v for k, v in os.environ.items()
                     if not k.startswith(("MLFLOW_", "PREFECT_", "AWS_"))}
        local_env["PREFECT_HOME"] = str(base / "prefect")  # its own ephemeral API and database
        lines = [f"s4-{i:02d}" for i in range(args.lines)]
        project = base / "sqlite" / "project"
        make_project(project, lines, str(base / "sqlite" / "remote"), local_env)
        seconds, output, code = retrain(project, local_env, "--parallel", "4")
        results.append(summary("SQLite + ephemeral Prefect, --parallel 4", lines, seconds, output, code))
    one = next(r["seconds"] for r in results if r["run"] == "Dask, 1 worker(s)")
    print(f"\n{args.lines} lines (8 train / 9 validation / 8 test images, 64 px, n_features 16), 2 cores\n")
    print("| run | wall s | vs 1 Dask worker | lines in summary | failed | exit | 'database is locked' |")
    print("|---|---:|---:|---:|---|---:|---|")
    for r in results:
        print(f"| {r['run']} | {r['seconds']:.1f} | {one / r['seconds']:.2f}x | {r['rows']} |"
              f" {', '.join(r['failed']) or 'none'} | {r['exit']} | {'yes' if r['locked'] else 'no'} |")


if __name__ == "__main__":
    main()
