"""The same flows on the team stack, only the environment changed.

``stack/stack.py up`` (what ``make stack-up`` runs) starts, on 127.0.0.1: PostgreSQL, an S3 server
(moto), ``mlflow server`` on PostgreSQL with artifacts in S3 and basic auth, ``prefect server``
with a process work pool, a worker and the deployments of prefect.yaml, and a Dask scheduler with
two workers. A project whose DVC remote is on that S3 then adds data, retrains three lines through
Dask, predicts from the champion, runs a deployment and a scheduled run through the worker; the
stack is stopped afterwards and must leave nothing running.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
from prefect.events.worker import EventsWorker
from prefect.logging.handlers import APILogWorker

from flows.cli import main
from flows.data.store import DataStore
from flows.registry.registry import Registry
from padim_plugin.artifact import TENSORS
from padim_plugin.score_log import ScoreLog, scored_rows
from stack.stack import read_env_file

from ..projects import REPOSITORY, git, init_project, tiny_params, versions
from ..synthetic import Synthetic, save, write_mvtec_folder

pytestmark = pytest.mark.stack
LINES = ("a", "b", "c")
APPROVAL_LINE = "gated"  # promotion: approval: its candidate waits for a reviewer
BUCKET = "padim"


@contextmanager
def team_environment(stack: dict[str, str]) -> Iterator[None]:
    """The stack's client environment (what ``. .stack/stack.env`` sets) and its Prefect API."""
    from prefect.settings import PREFECT_API_URL, temporary_settings

    with pytest.MonkeyPatch.context() as env, temporary_settings({PREFECT_API_URL: stack["PREFECT_API_URL"]}):
        for name, value in stack.items():
            if name != "STATE":
                env.setenv(name, value)
        yield


class Webhook:
    """The team's webhook: a receiver on 127.0.0.1 keeping the JSON bodies posted to it."""

    def __init__(self) -> None:
        bodies: list[dict] = []

        class Receiver(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                bodies.append(json.loads(self.rfile.read(int(self.headers.get("Content-Length") or 0))))
                self.send_response(204)
                self.end_headers()

            def log_message(self, *args: object) -> None:
                pass

        self.bodies = bodies
        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Receiver)
        self.url = f"http://127.0.0.1:{self.server.server_port}/hooks/padim"
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def wait_for(self, event: str, line: str, timeout_s: float = 120) -> dict:
        """The first body posted for ``event`` about ``line``, waiting up to ``timeout_s``."""
        deadline = time.monotonic() + timeout_s
        while not (found := [body for body in self.bodies if (body["event"], body["line"]) == (event, line)]):
            assert time.monotonic() < deadline, f"no {event} for {line} in {timeout_s} s: {self.bodies}"
            time.sleep(1)
        return found[0]


@pytest.fixture(scope="module")
def webhook() -> Iterator[Webhook]:
    receiver = Webhook()
    yield receiver
    receiver.server.shutdown()


@pytest.fixture(scope="module")
def stack(tmp_path_factory: pytest.TempPathFactory, webhook: Webhook) -> Iterator[dict[str, str]]:
    """The stack's client environment while it runs (its automations call ``webhook``); afterwards
    ``down`` must find nothing left."""
    state = tmp_path_factory.mktemp("stack")
    command = [sys.executable, str(REPOSITORY / "stack" / "stack.py")]
    started = subprocess.run([*command, "up", "--state", str(state)], cwd=REPOSITORY, capture_output=True,
                             text=True, timeout=600, env=os.environ | {"PADIM_WEBHOOK_URL": webhook.url})
    try:
        assert started.returncode == 0, started.stdout[-3000:] + started.stderr[-3000:]
        yield read_env_file(state / "stack.env") | {"STATE": str(state)}
    finally:
        # What this process still holds for the stack's Prefect API (events, logs) is sent while
        # it runs: a client service left for a stopped server hangs whoever drains them all next
        # (the Prefect test harness does, as it stops)
        EventsWorker.drain_all()
        APILogWorker.drain_all()
        stopped = subprocess.run([*command, "down", "--state", str(state)], cwd=REPOSITORY,
                                 capture_output=True, text=True, timeout=300)
        assert stopped.returncode == 0, stopped.stdout + stopped.stderr  # no process or port left


@pytest.fixture(autouse=True)
def _team_environment(stack: dict[str, str]) -> Iterator[None]:
    with team_environment(stack):
        yield


@pytest.fixture(scope="module")
def project(stack: dict[str, str], tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three lines added to a project whose DVC remote is the stack's S3 (keys from the environment)."""
    base = tmp_path_factory.mktemp("team")
    root = base / "project"
    dvc = str(Path(sys.executable).parent / "dvc")
    with team_environment(stack):
        params = tiny_params(*LINES) + f"  {APPROVAL_LINE}: {{promotion: approval}}\n"
        init_project(root, f"s3://{BUCKET}/dvc/{base.name}", params)
        subprocess.run([dvc, "remote", "modify", "default", "endpointurl", stack["AWS_ENDPOINT_URL"]],
                       cwd=root, check=True, capture_output=True)
        git(root, "commit", "-qam", "DVC remote on the team's S3")
        for seed, line in enumerate((*LINES, APPROVAL_LINE)):
            source = write_mvtec_folder(base / f"{line}_v1", 8, 4, 4, seed=seed, n_validation=4)
            # a new prefix of the bucket: starting a remote there is said explicitly
            assert main(["--root", str(root), "data", "add", line, str(source), "--create-remote"]) == 0
    return root


def s3_keys(stack: dict[str, str], prefix: str) -> list[str]:
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack["AWS_ENDPOINT_URL"])
    pages = s3.get_paginator("list_objects_v2").paginate(Bucket=BUCKET, Prefix=prefix)
    return [item["Key"] for page in pages for item in page.get("Contents", [])]


@pytest.fixture(scope="module")
def dask_tasks(project: Path, stack: dict[str, str]) -> list[dict]:
    """Every line retrained through the stack's Dask scheduler; the tasks its workers ran meanwhile
    (the scheduler's task stream: key, worker)."""
    from distributed import Client, get_task_stream

    with team_environment(stack), Client(stack["DASK_SCHEDULER_ADDRESS"], timeout=60) as client, \
            get_task_stream(client=client) as stream:
        retrain = ["retrain", "--dask-address", stack["DASK_SCHEDULER_ADDRESS"]]
        assert main(["--root", str(project), *retrain]) == 0
        workers = set(client.scheduler_info()["workers"])
    return [{"key": str(task["key"]), "worker": task["worker"], "workers": workers} for task in stream.data]


@pytest.fixture(scope="module")
def retrained(project: Path, dask_tasks: list[dict]) -> Path:
    return project


def test_the_lines_were_retrained_on_the_dask_workers(dask_tasks: list[dict]) -> None:
    retrains = [task for task in dask_tasks if "retrain" in task["key"].replace("_", " ")]
    assert len(retrains) == len(LINES) + 1, [task["key"] for task in dask_tasks]  # one task per line
    assert {task["worker"] for task in retrains} <= retrains[0]["workers"]  # the stack's workers ran them


def test_data_add_pushes_each_line_to_s3_with_no_key_in_the_dvc_config(project: Path,
                                                                       stack: dict[str, str]) -> None:
    pushed = s3_keys(stack, f"dvc/{project.parent.name}/")
    assert len(pushed) >= 3 * 25  # every image of three lines, and their listings
    config = (project / ".dvc" / "config").read_text()
    assert stack["AWS_ACCESS_KEY_ID"] not in config and stack["AWS_SECRET_ACCESS_KEY"] not in config


def test_retrain_through_dask_registers_champions_in_postgres_with_artifacts_in_s3(
        retrained: Path, stack: dict[str, str]) -> None:
    import psycopg2

    credentials = read_env_file(Path(stack["STATE"]) / "credentials.env")
    ports = json.loads((Path(stack["STATE"]) / "ports.json").read_text())
    password = credentials["STACK_PG_PASSWORD"]
    with psycopg2.connect(host="127.0.0.1", port=ports["postgres"], dbname="mlflow", user="stack",
                          password=password) as connection, connection.cursor() as cursor:
        cursor.execute("select name, alias, version from registered_model_aliases where alias = 'champion'"
                       " and name = any(%s)", ([f"padim-{line}" for line in LINES],))
        champions = sorted(cursor.fetchall())  # (the approval line's champion is another test's)
    assert champions == [(f"padim-{line}", "champion", 1) for line in LINES]
    registry = Registry(retrained)
    assert registry.uri == stack["MLFLOW_TRACKING_URI"]
    for line in LINES:
        run = registry.client.get_run(registry.champion(line).run_id)
        assert run.info.artifact_uri.startswith("mlflow-artifacts:")  # proxied by the server ...
    stored = s3_keys(stack, "mlflow/")  # ... to S3: each champion's tensors among them
    assert sum(key.endswith(f"/{TENSORS}") for key in stored) >= len(LINES)


def test_predict_loads_the_champion_through_the_server(retrained: Path, tmp_path: Path) -> None:
    test_images = DataStore(retrained).pull("a").path / "test"
    command = ["--root", str(retrained), "predict", "a", str(test_images), "--out", str(tmp_path)]
    assert main(command) == 0
    rows = (tmp_path / "scores.csv").read_text().splitlines()
    assert len(rows) == 1 + 8  # header and the 8 test images


def wait_for_final_state(flow_run_id: object, timeout_s: float = 600) -> object:
    from prefect.client.orchestration import get_client

    deadline = time.monotonic() + timeout_s
    with get_client(sync_client=True) as client:
        while True:
            flow_run = client.read_flow_run(flow_run_id)
            if flow_run.state is not None and flow_run.state.is_final():
                return flow_run
            assert time.monotonic() < deadline, f"flow run {flow_run.name} still {flow_run.state}"
            time.sleep(2)


def test_a_deployment_run_is_picked_up_by_the_worker(retrained: Path) -> None:
    from prefect.deployments import run_deployment

    flow_run = run_deployment("retrain-product-line/retrain-product-line",
                              parameters={"line": "b", "root": str(retrained)}, timeout=0)
    finished = wait_for_final_state(flow_run.id)
    assert finished.state.is_completed(), finished.state
    assert versions(Registry(retrained), "b") == ["1"]  # unchanged data: the worker reused v1


def test_a_deployment_waits_for_approval_and_padim_mlops_approve_answers_it(retrained: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.deployments import run_deployment

    registry = Registry(retrained)
    assert str(registry.alias(APPROVAL_LINE, "pending").version) == "1"  # from the retrain of every line
    flow_run = run_deployment("retrain-product-line/retrain-product-line", timeout=0, parameters={
        "line": APPROVAL_LINE, "root": str(retrained), "approval_timeout_s": 600})
    deadline = time.monotonic() + 300
    with get_client(sync_client=True) as client:
        while not (state := client.read_flow_run(flow_run.id).state) or not state.is_paused():
            assert time.monotonic() < deadline and not (state and state.is_final()), state
            time.sleep(2)
    approve = ["approve", APPROVAL_LINE, "1", "--reason", "heatmaps reviewed"]
    assert main(["--root", str(retrained), *approve]) == 0
    finished = wait_for_final_state(flow_run.id)
    assert finished.state.is_completed(), finished.state
    assert str(registry.champion(APPROVAL_LINE).version) == "1"
    events = registry.history(APPROVAL_LINE)
    assert [(event.action, event.outcome) for event in events] == [("gate", "pending"),
                                                                   ("approve", "champion")]
    assert events[-1].by == os.environ["MLFLOW_TRACKING_USERNAME"]  # the MLflow user, on a server


def test_the_production_log_appends_and_reads_back_parquet_on_the_teams_s3(stack: dict[str, str]) -> None:
    log = ScoreLog(f"s3://{BUCKET}/production")  # endpoint and keys from the environment, as a team's
    pixels = np.zeros((8, 8, 3), np.uint8)
    rows = scored_rows([pixels, pixels + 200], ["cam-1", "cam-2"], [0.2, 0.9], [0, 1], "3", "md5", 12.0,
                       keep_images=False)
    written = log.append("a", rows)
    read = log.read("a")
    assert read.column("source").to_pylist() == ["cam-1", "cam-2"]
    assert read.column("label").to_pylist() == [0, 1]
    objects = [key for key in s3_keys(stack, "production/") if not key.endswith("/")]  # no folder markers
    assert objects == [path.removeprefix(f"{BUCKET}/") for path in written]
    assert objects[0].startswith(f"production/line=a/day={rows[0].time:%Y-%m-%d}/")


def retrain_runs_of(line: str) -> list:
    """The flow runs of the deployment retrain-product-line for ``line``."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import FlowRunFilter, FlowRunFilterDeploymentId

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain-product-line/retrain-product-line")
        runs = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=FlowRunFilterDeploymentId(any_=[deployment.id])))
    return [run for run in runs if run.parameters.get("line") == line]


def test_two_data_adds_of_a_line_make_the_worker_retrain_it_once_on_the_newer_data(
        retrained: Path, tmp_path: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.states import Scheduled

    line = "fresh"  # added here first: no earlier commit of it has scheduled a run
    source = write_mvtec_folder(tmp_path / "v1", 8, 4, 4, seed=9, n_validation=4)
    assert main(["--root", str(retrained), "data", "add", line, str(source)]) == 0
    synthetic = Synthetic(64, seed=9)  # the line's texture
    for i in range(3):
        save(synthetic.normal(), tmp_path / "more" / f"more{i}.png")
    assert main(["--root", str(retrained), "data", "add", line, "--append", "--normal",
                 str(tmp_path / "more")]) == 0
    deadline = time.monotonic() + 60  # the trigger schedules the run when the first event arrives
    while not (runs := retrain_runs_of(line)):
        assert time.monotonic() < deadline, "the data commit scheduled no retrain"
        time.sleep(2)
    # the trigger starts it two minutes after the first commit; the test asks for it now
    with get_client(sync_client=True) as client:
        client.set_flow_run_state(runs[0].id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
    finished = wait_for_final_state(runs[0].id, timeout_s=300)  # the bound: picked up, fitted, gated
    assert finished.state.is_completed(), finished.state
    assert len(retrain_runs_of(line)) == 1  # the second commit, within the window, scheduled none
    registry = Registry(retrained)
    assert versions(registry, line) == ["1"]
    fitted_on = registry.version(line, "1").tags["padim.data_md5"]
    assert fitted_on == DataStore(retrained).md5(line, "HEAD")  # the newer version: both commits


def test_a_promotion_reaches_the_teams_webhook_with_its_line_version_reason_and_link(
        retrained: Path, webhook: Webhook, stack: dict[str, str]) -> None:
    body = webhook.wait_for("padim.model.promoted", "a")
    assert body["version"] == "1" and body["reason"]
    assert body["link"].startswith(stack["MLFLOW_TRACKING_URI"])  # the run's page on the MLflow server


def test_a_failed_retrain_reaches_the_teams_webhook_with_its_reason(retrained: Path,
                                                                    webhook: Webhook) -> None:
    from prefect.deployments import run_deployment

    flow_run = run_deployment("retrain-product-line/retrain-product-line",
                              parameters={"line": "nope", "root": str(retrained)}, timeout=0)
    assert wait_for_final_state(flow_run.id).state.is_failed()
    body = webhook.wait_for("padim.retrain.failed", "nope")
    assert "unknown product line 'nope'" in body["reason"] and body["version"] == ""


def test_the_next_scheduled_run_runs_on_the_worker_and_shows_in_the_history(retrained: Path) -> None:
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import (
        FlowRunFilter,
        FlowRunFilterDeploymentId,
        FlowRunFilterState,
        FlowRunFilterStateType,
    )
    from prefect.client.schemas.objects import StateType
    from prefect.states import Scheduled

    with get_client(sync_client=True) as client:
        deployment = client.read_deployment_by_name("retrain/nightly-retrain")
        assert [schedule.schedule.cron for schedule in deployment.schedules] == ["0 2 * * *"]
        of_deployment = FlowRunFilterDeploymentId(any_=[deployment.id])
        deadline = time.monotonic() + 180  # the server's scheduler service fills the next runs in
        while not (upcoming := client.read_flow_runs(flow_run_filter=FlowRunFilter(
                deployment_id=of_deployment,
                state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.SCHEDULED]))))):
            assert time.monotonic() < deadline, "the scheduler made no run of nightly-retrain"
            time.sleep(3)
        next_run = min(upcoming, key=lambda run: run.expected_start_time)
        client.update_flow_run(next_run.id, parameters={"lines": ["c"], "root": str(retrained)})
        client.set_flow_run_state(next_run.id, Scheduled(scheduled_time=datetime.now(UTC)), force=True)
    finished = wait_for_final_state(next_run.id)
    assert finished.state.is_completed(), finished.state
    with get_client(sync_client=True) as client:
        history = client.read_flow_runs(flow_run_filter=FlowRunFilter(
            deployment_id=of_deployment,
            state=FlowRunFilterState(type=FlowRunFilterStateType(any_=[StateType.COMPLETED]))))
    assert next_run.id in {run.id for run in history}


def test_a_wrong_mlflow_password_is_refused_by_name_before_any_work(
        retrained: Path, stack: dict[str, str], monkeypatch: pytest.MonkeyPatch,
        capsys: pytest.CaptureFixture[str]) -> None:
    before = {line: versions(Registry(retrained), line) for line in LINES}
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", "not-the-password")
    assert main(["--root", str(retrained), "retrain", "a"]) == 1
    assert f"MLflow at {stack['MLFLOW_TRACKING_URI']} refused the credentials" in capsys.readouterr().err
    monkeypatch.setenv("MLFLOW_TRACKING_PASSWORD", stack["MLFLOW_TRACKING_PASSWORD"])
    assert {line: versions(Registry(retrained), line) for line in LINES} == before


def stored_objects(stack: dict[str, str]) -> dict[str, str]:
    """Every object in the stack's bucket (DVC remote and MLflow artifacts), as text."""
    import boto3

    s3 = boto3.client("s3", endpoint_url=stack["AWS_ENDPOINT_URL"])
    return {f"s3://{BUCKET}/{key}": s3.get_object(Bucket=BUCKET, Key=key)["Body"].read().decode("latin-1")
            for key in s3_keys(stack, "")}


def database_rows(stack: dict[str, str]) -> dict[str, str]:
    """Every row of every table of the stack's PostgreSQL databases, as text."""
    import psycopg2

    state = Path(stack["STATE"])
    password = read_env_file(state / "credentials.env")["STACK_PG_PASSWORD"]
    port = json.loads((state / "ports.json").read_text())["postgres"]
    rows = {}
    for database in ("mlflow", "mlflow_auth", "prefect"):
        with psycopg2.connect(host="127.0.0.1", port=port, dbname=database, user="stack",
                              password=password) as connection, connection.cursor() as cursor:
            cursor.execute("select table_name from information_schema.tables where table_schema = 'public'")
            for (table,) in cursor.fetchall():
                cursor.execute(f'select * from "{table}"')
                rows[f"postgres {database}.{table}"] = repr(cursor.fetchall())
    return rows


def test_no_secret_lands_in_files_runs_artifacts_objects_rows_or_logs(retrained: Path,
                                                                       stack: dict[str, str]) -> None:
    """Everything the data add and the retrain through Dask wrote (and whatever other tests of this
    module wrote before, in any order) is searched for every secret of the stack."""
    from prefect.client.orchestration import get_client
    from prefect.client.schemas.filters import LogFilter

    state = Path(stack["STATE"])
    secrets = {name: value for name, value in read_env_file(state / "credentials.env").items()
               if "PASSWORD" in name or "KEY" in name}
    places: dict[str, str] = {}
    for path in [*retrained.rglob("*"), *(state / "logs").glob("*.log"), state / "mlflow-auth.ini"]:
        if path.is_file() and ".git/objects" not in str(path):
            places[str(path)] = path.read_bytes().decode("latin-1")
    registry = Registry(retrained)
    for experiment in registry.client.search_experiments():
        for run in registry.client.search_runs([experiment.experiment_id]):
            places[f"run {run.info.run_id}"] = repr((run.data.params, run.data.tags))
    for line in LINES:
        for version in registry.client.search_model_versions(f"name = 'padim-{line}'"):
            places[f"padim-{line} v{version.version}"] = repr(version.tags)
    with get_client(sync_client=True) as client:
        places["prefect artifacts"] = repr([(a.key, a.data, a.description) for a in client.read_artifacts()])
        logs, page = [], True
        while page:
            page = client.read_logs(LogFilter(), limit=200, offset=len(logs))
            logs += [log.message for log in page]
        places["prefect logs"] = "\n".join(logs)
    objects, rows = stored_objects(stack), database_rows(stack)
    places |= objects | rows
    leaks = [(name, where) for name, value in secrets.items()
             for where, text in places.items() if value in text]
    assert leaks == []
    assert len(objects) > 75 and len(rows) > 20  # S3 objects and database tables were all read
    assert len(places) > 150  # files, runs, versions, artifacts, logs, objects and rows
