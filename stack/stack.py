#!/usr/bin/env python3
"""The team stack on loopback, from the project's own files: no Docker, every piece from PyPI/Debian.

    python stack/stack.py up     [--state DIR] [--credentials FILE]
    python stack/stack.py status [--state DIR]
    python stack/stack.py down   [--state DIR]

`up` starts, each in its own process group (log in DIR/logs/, pid in DIR/pids/):

    postgres        PostgreSQL 15 (Debian's), databases mlflow, mlflow_auth, prefect
    s3              moto's S3 server, bucket `padim`: MLflow artifacts under mlflow/, the DVC remote
                    under dvc/
    mlflow          mlflow server: Postgres backend store, artifacts proxied to s3://padim/mlflow, basic auth
    prefect-server  prefect server start, on the `prefect` database
    prefect-worker  a worker of the process work pool `padim` (the deployments of prefect.yaml are applied,
                    and, where PADIM_WEBHOOK_URL is set, the automations of automations.yaml)
    dask-scheduler  dask scheduler
    dask-worker-1/2 two dask workers, one thread each

Everything binds 127.0.0.1, on free ports picked at start. Run with the project's venv python: the
tools (mlflow, prefect, dask, moto_server) are taken from the folder of `sys.executable`.

Credentials (MLflow admin, S3 keys, Postgres password, Flask secret) come, in that order, from the
environment (STACK_* variables below), from the file given with --credentials, or are generated;
they are written to DIR/credentials.env (mode 600). They reach the services through environment
variables only: never through a command line, a URI in a log, params.yaml or .dvc/config.
The client environment is DIR/stack.env (mode 600): `set -a; . .stack/stack.env; set +a`.

The stack is ephemeral: `up` starts from empty databases and an empty S3 (moto keeps it in memory);
`down` stops everything and keeps DIR (logs, credentials) for inspection.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import pwd
import secrets
import shlex
import shutil
import signal
import socket
import string
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
BIN = Path(sys.executable).parent
PG_BIN = Path(os.environ.get("STACK_PG_BIN", "/usr/lib/postgresql/15/bin"))
PG_OS_USER = os.environ.get("STACK_PG_OS_USER", "postgres")
PG_ROLE = "stack"
BUCKET = "padim"
POOL = "padim"
REGION = "us-east-1"
DATABASES = ("mlflow", "mlflow_auth", "prefect")

# Start order; `down` goes the other way.
SERVICES = ("postgres", "s3", "mlflow", "prefect-server", "prefect-worker",
            "dask-scheduler", "dask-worker-1", "dask-worker-2")

# Credentials: name in credentials.env / environment -> how to generate one.
CREDENTIALS: dict[str, Callable[[], str]] = {
    "STACK_MLFLOW_ADMIN_USER": lambda: "admin",
    "STACK_MLFLOW_ADMIN_PASSWORD": lambda: secrets.token_urlsafe(24),
    "STACK_S3_ACCESS_KEY": lambda: "AKIA" + "".join(secrets.choice(string.ascii_uppercase + string.digits)
                                                    for _ in range(16)),
    "STACK_S3_SECRET_KEY": lambda: secrets.token_urlsafe(30),
    "STACK_PG_PASSWORD": lambda: secrets.token_urlsafe(24),
    "STACK_FLASK_SECRET_KEY": lambda: secrets.token_urlsafe(32),
}

STOP_TIMEOUT_S = 15.0
AUTH_CACHE_TTL_S = 300  # how long the MLflow server trusts a password it has checked


class StackError(RuntimeError):
    pass


# ------------------------------------------------------------------------------------------ state dir


class State:
    def __init__(self, path: Path):
        self.dir = path.resolve()
        self.logs = self.dir / "logs"
        self.pids = self.dir / "pids"
        # As root, PostgreSQL runs as its own OS user, who must reach the cluster's folder; the state
        # folder's parents may be private (a home folder, pytest's temp), so it lives in the system's.
        digest = hashlib.sha256(str(self.dir).encode()).hexdigest()[:12]
        self.pg = (Path(tempfile.gettempdir()) / f"padim-stack-pg-{digest}" if os.geteuid() == 0
                   else self.dir / "pg")
        self.pg_data = self.pg / "data"
        self.pg_run = self.pg / "run"
        self.prefect_home = self.dir / "prefect"
        self.dask = self.dir / "dask"
        self.credentials = self.dir / "credentials.env"
        self.stack_env = self.dir / "stack.env"
        self.ports_file = self.dir / "ports.json"
        self.auth_ini = self.dir / "mlflow-auth.ini"

    def log(self, name: str) -> Path:
        return self.logs / f"{name}.log"

    def pidfile(self, name: str) -> Path:
        return self.pids / f"{name}.pid"

    def ports(self) -> dict[str, int]:
        try:
            return json.loads(self.ports_file.read_text())
        except (OSError, ValueError):
            return {}

    def save_ports(self, ports: dict[str, int]) -> None:
        self.ports_file.write_text(json.dumps(ports, indent=2) + "\n")


def write_private(path: Path, text: str) -> None:
    """Write a file that only its owner can read, created with that mode (never readable in between)."""
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)


def read_env_file(path: Path) -> dict[str, str]:
    values = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.removeprefix("export ").partition("=")
        parts = shlex.split(value) if value.strip() else [""]
        values[key.strip()] = parts[0] if parts else ""
    return values


def env_file_text(values: dict[str, str], header: str) -> str:
    return header + "".join(f"{k}={shlex.quote(v)}\n" for k, v in values.items())


def load_credentials(file: Path | None) -> dict[str, str]:
    from_file = read_env_file(file) if file else {}
    creds = {}
    for key, generate in CREDENTIALS.items():
        creds[key] = os.environ.get(key) or from_file.get(key) or generate()
    return creds


# ------------------------------------------------------------------------------------------ processes


def proc_stat(pid: int) -> tuple[int, int] | None:
    """(process group, start time in clock ticks) of a live process, or None."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rindex(")") + 2:].split()
    if fields[0] == "Z":  # a zombie is not running
        return None
    return int(fields[2]), int(fields[19])


def record_pid(state: State, name: str, pid: int) -> None:
    stat = proc_stat(pid)
    start = stat[1] if stat else 0
    state.pidfile(name).write_text(f"{pid} {start}\n")


def recorded(state: State, name: str) -> tuple[int, int] | None:
    try:
        pid, start = state.pidfile(name).read_text().split()
        return int(pid), int(start)
    except (OSError, ValueError):
        return None


def alive(state: State, name: str) -> int | None:
    """The recorded pid of a service if that very process (same start time) still runs."""
    rec = recorded(state, name)
    if rec is None:
        return None
    stat = proc_stat(rec[0])
    if stat is None or (rec[1] and stat[1] != rec[1]):
        return None
    return rec[0]


def group_members(pgid: int) -> list[int]:
    members = []
    for entry in Path("/proc").iterdir():
        if entry.name.isdigit():
            stat = proc_stat(int(entry.name))
            if stat and stat[0] == pgid:
                members.append(int(entry.name))
    return members


def spawn(state: State, name: str, argv: list[str], env: dict[str, str],
          cwd: Path = ROOT) -> subprocess.Popen:
    log = open(state.log(name), "ab")  # the child keeps it
    try:
        proc = subprocess.Popen(argv, cwd=cwd, env=env, stdin=subprocess.DEVNULL, stdout=log,
                                stderr=subprocess.STDOUT, start_new_session=True)
    finally:
        log.close()
    record_pid(state, name, proc.pid)
    return proc


def log_tail(path: Path, lines: int = 25) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:]) or "    (empty log)"


def fail(state: State, name: str, why: str) -> StackError:
    return StackError(f"{name}: {why}\n  log {state.log(name)}, last lines:\n{log_tail(state.log(name))}")


def run_logged(state: State, name: str, argv: list[str], env: dict[str, str] | None = None,
               cwd: Path = ROOT, stdin: str | None = None, timeout: float = 600) -> None:
    """Run a one-off command, its output appended to the service's log; raise naming it if it fails."""
    with open(state.log(name), "ab") as log:
        log.write(f"\n$ {' '.join(shlex.quote(a) for a in argv)}\n".encode())
        log.flush()
        try:
            proc = subprocess.run(argv, cwd=cwd, env=env, input=stdin.encode() if stdin else None,
                                  stdin=None if stdin else subprocess.DEVNULL, stdout=log,
                                  stderr=subprocess.STDOUT, timeout=timeout)
        except subprocess.TimeoutExpired:
            raise fail(state, name, f"`{argv[0]} ...` did not finish in {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise fail(state, name, f"`{' '.join(argv[:4])} ...` exited with {proc.returncode}")


# ------------------------------------------------------------------------------------------ network


def free_ports(n: int) -> list[int]:
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def tcp_open(port: int, host: str = "127.0.0.1") -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.settimeout(1)
        return s.connect_ex((host, port)) == 0


def http_get(url: str, timeout: float = 5) -> tuple[int, bytes]:
    try:
        with urllib.request.urlopen(url, timeout=timeout) as r:  # loopback only
            return r.status, r.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def http_json(url: str, body: dict | None = None, timeout: float = 5):
    req = urllib.request.Request(url, data=json.dumps(body).encode() if body is not None else None,
                                 headers={"Content-Type": "application/json"},
                                 method="POST" if body is not None else "GET")
    with urllib.request.urlopen(req, timeout=timeout) as r:  # loopback only
        return json.loads(r.read() or b"null")


def listening() -> dict[int, tuple[str, int]]:
    """Socket inode -> (address, port) of every listening TCP socket (IPv4 and IPv6)."""
    out = {}
    for table, v6 in (("/proc/net/tcp", False), ("/proc/net/tcp6", True)):
        try:
            rows = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for row in rows:
            f = row.split()
            if f[3] != "0A":  # LISTEN
                continue
            addr_hex, port_hex = f[1].split(":")
            raw = bytes.fromhex(addr_hex)
            if v6:
                raw = b"".join(raw[i:i + 4][::-1] for i in range(0, 16, 4))
                addr = socket.inet_ntop(socket.AF_INET6, raw)
            else:
                addr = socket.inet_ntop(socket.AF_INET, raw[::-1])
            out[int(f[9])] = (addr, int(port_hex, 16))
    return out


def sockets_of(pids: list[int], table: dict[int, tuple[str, int]]) -> set[tuple[str, int]]:
    found = set()
    for pid in pids:
        with contextlib.suppress(OSError):
            for fd in Path(f"/proc/{pid}/fd").iterdir():
                with contextlib.suppress(OSError):
                    link = os.readlink(fd)
                    if link.startswith("socket:["):
                        inode = int(link[8:-1])
                        if inode in table:
                            found.add(table[inode])
    return found


def listening_ports() -> set[int]:
    return {port for _, port in listening().values()}


def wait_for(state: State, name: str, check: Callable[[], bool], timeout: float,
             proc: subprocess.Popen | None = None, what: str = "to become healthy") -> None:
    deadline = time.monotonic() + timeout
    while True:
        with contextlib.suppress(Exception):
            if check():
                return
        if proc is not None and proc.poll() is not None:
            raise fail(state, name, f"exited with {proc.returncode} before becoming healthy")
        if time.monotonic() > deadline:
            raise fail(state, name, f"did not come up {what} within {timeout:.0f} s")
        time.sleep(0.5)


# ------------------------------------------------------------------------------------------ postgres


def pg_as_user(argv: list[str]) -> list[str]:
    """Postgres refuses to run as root: as root, run its tools as the postgres OS user."""
    if os.geteuid() == 0:
        return ["runuser", "-u", PG_OS_USER, "--", *argv]
    return argv


def start_postgres(state: State, port: int, creds: dict[str, str]) -> None:
    for tool in ("initdb", "pg_ctl", "psql", "pg_isready"):
        if not (PG_BIN / tool).exists():
            raise StackError(f"postgres: {PG_BIN / tool} not found (apt-get install postgresql-15, "
                             "or set STACK_PG_BIN to the folder of initdb/pg_ctl)")
    uid = gid = None
    if os.geteuid() == 0:
        try:
            user = pwd.getpwnam(PG_OS_USER)
        except KeyError:
            raise StackError(f"postgres: the OS user {PG_OS_USER!r} does not exist (it comes with the "
                             "postgresql package; or set STACK_PG_OS_USER)") from None
        uid, gid = user.pw_uid, user.pw_gid
    state.pg.mkdir(mode=0o700)
    state.pg_data.mkdir(mode=0o700)
    state.pg_run.mkdir(mode=0o700)
    log = state.log("postgres")
    log.touch()
    server_log = state.pg / "server.log"  # written by the server itself: where its OS user can write
    server_log.touch()
    state.log("postgres-server").symlink_to(server_log)
    if uid is not None:
        for p in (state.pg, state.pg_data, state.pg_run, server_log):
            os.chown(p, uid, gid)
    # root: local socket connections by the postgres OS user (peer); otherwise the socket folder is
    # private to the user running it (0700), so trust there. TCP always asks for a password.
    local_auth = "peer" if uid is not None else "trust"
    run_logged(state, "postgres", pg_as_user([
        str(PG_BIN / "initdb"), "-D", str(state.pg_data), "-U", "postgres", "-E", "UTF8", "--no-locale",
        f"--auth-local={local_auth}", "--auth-host=scram-sha-256"]))
    with open(state.pg_data / "postgresql.conf", "a") as conf:
        conf.write("\n# padim-plugin stack\n"
                   "listen_addresses = '127.0.0.1'\n"
                   f"port = {port}\n"
                   f"unix_socket_directories = '{state.pg_run}'\n"
                   "password_encryption = 'scram-sha-256'\n"
                   "max_connections = 200\n")
    run_logged(state, "postgres", pg_as_user([
        str(PG_BIN / "pg_ctl"), "-D", str(state.pg_data), "-l", str(server_log), "-w", "-t", "60", "start"]),
        timeout=90)
    pid = int((state.pg_data / "postmaster.pid").read_text().split()[0])
    record_pid(state, "postgres", pid)
    wait_for(state, "postgres", lambda: subprocess.run(
        [str(PG_BIN / "pg_isready"), "-q", "-h", "127.0.0.1", "-p", str(port)]).returncode == 0, 30)
    password = creds["STACK_PG_PASSWORD"].replace("'", "''")
    sql = (f"CREATE ROLE {PG_ROLE} LOGIN PASSWORD '{password}';\n"  # on stdin: never on a command line
           + "".join(f"CREATE DATABASE {db} OWNER {PG_ROLE};\n" for db in DATABASES))
    run_logged(state, "postgres", pg_as_user([
        str(PG_BIN / "psql"), "-X", "-q", "-v", "ON_ERROR_STOP=1", "-h", str(state.pg_run), "-p", str(port),
        "-U", "postgres", "-d", "postgres", "-f", "-"]), stdin=sql, timeout=60)


def stop_postgres(state: State) -> None:
    if alive(state, "postgres") is None or not (state.pg_data / "postmaster.pid").exists():
        return
    with contextlib.suppress(subprocess.TimeoutExpired, OSError):
        subprocess.run(pg_as_user([str(PG_BIN / "pg_ctl"), "-D", str(state.pg_data), "-m", "fast", "-w",
                                   "-t", "30", "stop"]), stdout=subprocess.DEVNULL,
                       stderr=subprocess.DEVNULL, timeout=40)


def pg_url(driver: str, port: int, db: str) -> str:
    # No password in the URL: libpq (psycopg2) and asyncpg both read PGPASSWORD.
    return f"{driver}://{PG_ROLE}@127.0.0.1:{port}/{db}"


# ------------------------------------------------------------------------------------------ the stack


def base_env(state: State) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items()
           if not k.startswith(("STACK_", "MLFLOW_", "AWS_", "PREFECT_", "DASK_", "PG"))}
    env.update({
        "PATH": f"{BIN}{os.pathsep}{env.get('PATH', '')}",
        "PYTHONUNBUFFERED": "1",
        "DO_NOT_TRACK": "1",
        "PREFECT_SERVER_ANALYTICS_ENABLED": "false",
        "MLFLOW_DISABLE_TELEMETRY": "true",
    })
    return env


def client_env(ports: dict[str, int], creds: dict[str, str]) -> dict[str, str]:
    """What a client (or a worker running flows) needs: the content of stack.env."""
    s3 = f"http://127.0.0.1:{ports['s3']}"
    return {
        "MLFLOW_TRACKING_URI": f"http://127.0.0.1:{ports['mlflow']}",
        "MLFLOW_TRACKING_USERNAME": creds["STACK_MLFLOW_ADMIN_USER"],
        "MLFLOW_TRACKING_PASSWORD": creds["STACK_MLFLOW_ADMIN_PASSWORD"],
        "MLFLOW_S3_ENDPOINT_URL": s3,
        "AWS_ACCESS_KEY_ID": creds["STACK_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["STACK_S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": REGION,
        "AWS_ENDPOINT_URL": s3,
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "DASK_SCHEDULER_ADDRESS": f"tcp://127.0.0.1:{ports['dask']}",
    }


def tool(name: str) -> str:
    path = BIN / name
    if not path.exists():
        raise StackError(f"{name} not found next to {sys.executable}: install the project with "
                         "`pip install -e '.[dev,mlops,team]'` (make install)")
    return str(path)


def start_s3(state: State, ports: dict[str, int], creds: dict[str, str]) -> None:
    env = base_env(state)
    tool("moto_server")  # moto[server] is installed; run through the wrapper that masks key ids in its log
    proc = spawn(state, "s3", [sys.executable, str(ROOT / "stack" / "s3_server.py"),
                               "-H", "127.0.0.1", "-p", str(ports["s3"])], env)
    url = f"http://127.0.0.1:{ports['s3']}"
    wait_for(state, "s3", lambda: http_get(f"{url}/moto-api/")[0] < 500, 60, proc)
    try:
        import boto3  # the team extra brings it
    except ImportError:
        raise StackError("s3: boto3 is missing from this python: pip install -e '.[team]'") from None
    s3 = boto3.client("s3", endpoint_url=url, region_name=REGION,
                      aws_access_key_id=creds["STACK_S3_ACCESS_KEY"],
                      aws_secret_access_key=creds["STACK_S3_SECRET_KEY"])
    try:
        s3.create_bucket(Bucket=BUCKET)
    except s3.exceptions.BucketAlreadyOwnedByYou:
        pass


def start_mlflow(state: State, ports: dict[str, int], creds: dict[str, str]) -> None:
    # The auth config holds no secret: its database password comes from PGPASSWORD, the admin's
    # from MLFLOW_AUTH_ADMIN_PASSWORD (read once, to create the admin in an empty user store).
    state.auth_ini.write_text(
        "[mlflow]\n"
        "default_permission = READ\n"
        f"database_uri = {pg_url('postgresql+psycopg2', ports['postgres'], 'mlflow_auth')}\n"
        "authorization_function = mlflow.server.auth:authenticate_request_basic_auth\n"
        "grant_default_workspace_access = false\n"
        # MLflow checks a password with scrypt, by design about 0.4 s of CPU, and off by default
        # does so on every request: a retrain's few hundred requests cost minutes. A successful
        # check is kept (HMAC-keyed, in each server process) for this long; a wrong password is
        # never kept, a changed one is refused after at most this long.
        f"auth_cache_ttl_seconds = {AUTH_CACHE_TTL_S}\n")
    env = base_env(state)
    env.update({
        "PGPASSWORD": creds["STACK_PG_PASSWORD"],
        "MLFLOW_AUTH_CONFIG_PATH": str(state.auth_ini),
        "MLFLOW_AUTH_ADMIN_USERNAME": creds["STACK_MLFLOW_ADMIN_USER"],
        "MLFLOW_AUTH_ADMIN_PASSWORD": creds["STACK_MLFLOW_ADMIN_PASSWORD"],
        "MLFLOW_FLASK_SERVER_SECRET_KEY": creds["STACK_FLASK_SECRET_KEY"],
        "MLFLOW_S3_ENDPOINT_URL": f"http://127.0.0.1:{ports['s3']}",
        "AWS_ACCESS_KEY_ID": creds["STACK_S3_ACCESS_KEY"],
        "AWS_SECRET_ACCESS_KEY": creds["STACK_S3_SECRET_KEY"],
        "AWS_DEFAULT_REGION": REGION,
        "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false",  # its job runner (GenAI jobs) is not used here
    })
    proc = spawn(state, "mlflow", [
        tool("mlflow"), "server",
        "--backend-store-uri", pg_url("postgresql+psycopg2", ports["postgres"], "mlflow"),
        "--artifacts-destination", f"s3://{BUCKET}/mlflow",
        "--app-name", "basic-auth",
        "--host", "127.0.0.1", "--port", str(ports["mlflow"]),
        "--workers", os.environ.get("STACK_MLFLOW_WORKERS", "2"),
    ], env)
    url = f"http://127.0.0.1:{ports['mlflow']}"
    wait_for(state, "mlflow", lambda: http_get(f"{url}/health")[0] == 200, 180, proc)
    # basic auth is on: an anonymous API call is refused
    code, _ = http_get(f"{url}/api/2.0/mlflow/experiments/search?max_results=1")
    if code != 401:
        raise fail(state, "mlflow", f"an anonymous API call answered {code}, not 401: is basic auth on?")


def prefect_env(state: State, ports: dict[str, int]) -> dict[str, str]:
    env = base_env(state)
    env.update({
        "PREFECT_HOME": str(state.prefect_home),
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
        "PREFECT_CLI_PROMPT": "false",
        "PWD": str(ROOT),  # prefect.yaml's pull step is `{{ $PWD }}`: the project root
    })
    return env


def start_prefect_server(state: State, ports: dict[str, int], creds: dict[str, str]) -> None:
    state.prefect_home.mkdir(exist_ok=True)
    env = base_env(state)
    env.update({
        "PREFECT_HOME": str(state.prefect_home),
        "PGPASSWORD": creds["STACK_PG_PASSWORD"],
        "PREFECT_API_DATABASE_CONNECTION_URL": pg_url("postgresql+asyncpg", ports["postgres"], "prefect"),
        "PREFECT_SERVER_API_HOST": "127.0.0.1",
        "PREFECT_SERVER_API_PORT": str(ports["prefect"]),
        "PREFECT_API_URL": f"http://127.0.0.1:{ports['prefect']}/api",
    })
    proc = spawn(state, "prefect-server", [
        tool("prefect"), "server", "start", "--host", "127.0.0.1", "--port", str(ports["prefect"])], env)
    url = f"http://127.0.0.1:{ports['prefect']}/api/health"
    wait_for(state, "prefect-server", lambda: http_get(url)[0] == 200, 240, proc)


def apply_prefect(state: State, ports: dict[str, int]) -> None:
    env = prefect_env(state, ports)
    api = f"http://127.0.0.1:{ports['prefect']}/api"
    try:
        http_json(f"{api}/work_pools/{POOL}")
    except urllib.error.HTTPError as e:
        if e.code != 404:
            raise
        run_logged(state, "prefect-server", [tool("prefect"), "--no-prompt", "work-pool", "create", POOL,
                                             "--type", "process"], env=env, timeout=180)
    run_logged(state, "prefect-server", [tool("prefect"), "--no-prompt", "deploy", "--all"],
               env=env, timeout=600)
    if os.environ.get("PADIM_WEBHOOK_URL"):  # the team's webhook: automations.yaml's notifications go there
        run_logged(state, "prefect-server", [tool("padim-mlops"), "automations", "apply"],
                   env=env | {"PADIM_WEBHOOK_URL": os.environ["PADIM_WEBHOOK_URL"]}, timeout=180)


def worker_env(state: State, ports: dict[str, int], creds: dict[str, str]) -> dict[str, str]:
    """The environment of a process that runs flows or tasks: the client env, plus the project on the path."""
    env = prefect_env(state, ports)
    env.update(client_env(ports, creds))
    env["PYTHONPATH"] = os.pathsep.join(p for p in (str(ROOT), os.environ.get("PYTHONPATH", "")) if p)
    return env


def start_prefect_worker(state: State, ports: dict[str, int], creds: dict[str, str]) -> None:
    proc = spawn(state, "prefect-worker", [
        tool("prefect"), "worker", "start", "--pool", POOL, "--type", "process",
        "--name", "stack-worker"], worker_env(state, ports, creds))
    api = f"http://127.0.0.1:{ports['prefect']}/api"

    def online() -> bool:
        workers = http_json(f"{api}/work_pools/{POOL}/workers/filter", {})
        return any(w.get("status") == "ONLINE" or w.get("last_heartbeat_time") for w in workers)

    wait_for(state, "prefect-worker", online, 120, proc, "(no heartbeat in the work pool)")


def start_dask(state: State, ports: dict[str, int], creds: dict[str, str]) -> None:
    env = worker_env(state, ports, creds)
    state.dask.mkdir(exist_ok=True)
    proc = spawn(state, "dask-scheduler", [
        tool("dask"), "scheduler", "--host", "127.0.0.1", "--port", str(ports["dask"]),
        "--dashboard-address", f"127.0.0.1:{ports['dask-dashboard']}"], env)
    info = f"http://127.0.0.1:{ports['dask-dashboard']}"
    wait_for(state, "dask-scheduler",
             lambda: tcp_open(ports["dask"]) and http_get(f"{info}/health")[0] == 200, 90, proc)
    procs = {}
    for i in (1, 2):
        name = f"dask-worker-{i}"
        procs[name] = spawn(state, name, [
            tool("dask"), "worker", f"tcp://127.0.0.1:{ports['dask']}", "--nthreads", "1",
            "--host", "127.0.0.1", "--no-dashboard", "--dashboard-address", "127.0.0.1:0", "--name", name,
            "--local-directory", str(state.dask / name)], env)

    def workers() -> int:
        return int(http_json(f"{info}/json/counts.json").get("workers", 0))

    for name, proc in procs.items():
        wait_for(state, name, lambda: workers() >= 2, 120, proc, "(the scheduler sees fewer than 2 workers)")


def check_loopback(state: State, ports: dict[str, int]) -> None:
    """Every socket our processes listen on is on 127.0.0.1 (or ::1); record them all for `down`."""
    table = listening()
    for name in SERVICES:
        pid = alive(state, name)
        if pid is None:
            continue
        extra = 0
        for addr, port in sorted(sockets_of(group_members(pid) or [pid], table)):
            if addr not in ("127.0.0.1", "::1"):
                raise StackError(f"{name}: listens on {addr}:{port}, not on loopback")
            if port not in ports.values():
                extra += 1
                ports[f"{name}#{extra}"] = port
    state.save_ports(ports)


def running(state: State) -> list[str]:
    return [name for name in SERVICES if alive(state, name) is not None]


def up(state: State, credentials_file: Path | None) -> int:
    if state.dir.exists() and running(state):
        raise StackError(f"a stack from {state.dir} still runs ({', '.join(running(state))}): "
                         f"run `python stack/stack.py down --state {state.dir}` first")
    creds = load_credentials(credentials_file)  # before resetting: the named file may live in DIR
    state.dir.mkdir(parents=True, exist_ok=True)
    os.chmod(state.dir, 0o711)  # the postgres user must reach DIR/pg, nothing in DIR is world-readable
    for old in (state.pg, state.prefect_home, state.dask, state.pids, state.logs):
        shutil.rmtree(old, ignore_errors=True)
    for old in (state.stack_env, state.ports_file, state.auth_ini):
        with contextlib.suppress(FileNotFoundError):
            old.unlink()
    state.logs.mkdir(mode=0o755)
    state.pids.mkdir()
    write_private(state.credentials, env_file_text(
        creds, "# padim-plugin stack credentials (generated by stack/stack.py up; keep private)\n"))

    names = ["postgres", "s3", "mlflow", "prefect", "dask", "dask-dashboard"]
    ports = dict(zip(names, free_ports(len(names)), strict=True))
    state.save_ports(ports)

    t0 = time.monotonic()
    steps: list[tuple[str, Callable[[], None]]] = [
        (f"postgres        127.0.0.1:{ports['postgres']}",
         lambda: start_postgres(state, ports["postgres"], creds)),
        (f"s3 (moto)       http://127.0.0.1:{ports['s3']}  bucket {BUCKET}",
         lambda: start_s3(state, ports, creds)),
        (f"mlflow          http://127.0.0.1:{ports['mlflow']}", lambda: start_mlflow(state, ports, creds)),
        (f"prefect server  http://127.0.0.1:{ports['prefect']}/api",
         lambda: start_prefect_server(state, ports, creds)),
        (f"prefect         work pool {POOL}, prefect deploy --all", lambda: apply_prefect(state, ports)),
        (f"prefect worker  pool {POOL}", lambda: start_prefect_worker(state, ports, creds)),
        (f"dask            tcp://127.0.0.1:{ports['dask']} + 2 workers",
         lambda: start_dask(state, ports, creds)),
        ("loopback check", lambda: check_loopback(state, ports)),
    ]
    try:
        for label, step in steps:
            t = time.monotonic()
            print(f"  {label} ...", end="", flush=True)
            step()
            print(f" ok ({time.monotonic() - t:.1f} s)", flush=True)
    except BaseException as e:
        print(" FAILED", flush=True)
        print(f"\nstack up failed: {e}\n\nstopping what was started ...", file=sys.stderr, flush=True)
        down(state, quiet=True)
        if isinstance(e, StackError):
            return 1
        raise

    env = client_env(ports, creds)
    write_private(state.stack_env, env_file_text(
        env, "# padim-plugin stack: client environment (keep private: it holds credentials)\n"
             "# load it with:  set -a; . .stack/stack.env; set +a\n"))
    rel = os.path.relpath(state.dir, Path.cwd())
    print(f"""
stack up in {time.monotonic() - t0:.0f} s. Client environment in {rel}/stack.env:

    set -a; . {rel}/stack.env; set +a

MLflow UI      {env['MLFLOW_TRACKING_URI']}   (user {creds['STACK_MLFLOW_ADMIN_USER']}, password in stack.env)
Prefect UI     http://127.0.0.1:{ports['prefect']}
Dask dashboard http://127.0.0.1:{ports['dask-dashboard']}/status
Retrain on the cluster:  padim-mlops retrain --dask-address "$DASK_SCHEDULER_ADDRESS"
DVC remote on the same S3 (the keys stay in the environment, never in .dvc/config):

    dvc remote add -d -f team s3://{BUCKET}/dvc
    dvc remote modify team endpointurl {env['AWS_ENDPOINT_URL']}

Stop it all:  make stack-down   (or python stack/stack.py down --state {rel})""")
    return 0


def stop_group(name: str, pid: int) -> None:
    """TERM the service's process group, then KILL what is left after STOP_TIMEOUT_S."""
    for sig in (signal.SIGTERM, signal.SIGKILL):
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pid, sig)
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)
        deadline = time.monotonic() + (STOP_TIMEOUT_S if sig == signal.SIGTERM else 5)
        while time.monotonic() < deadline:
            if proc_stat(pid) is None and not group_members(pid):
                return
            time.sleep(0.2)


def down(state: State, quiet: bool = False) -> int:
    if not state.dir.exists():
        if not quiet:
            print(f"no stack state in {state.dir}: nothing to stop")
        return 0
    for name in reversed(SERVICES):
        pid = alive(state, name)
        rec = recorded(state, name)
        if pid is None:
            # the leader is gone; members of its group (which keeps its id while any is alive) are ours
            if rec and proc_stat(rec[0]) is None and group_members(rec[0]):
                if not quiet:
                    print(f"  stopping what is left of {name} (group {rec[0]}) ...", flush=True)
                stop_group(name, rec[0])
            continue
        if not quiet:
            print(f"  stopping {name} (pid {pid}) ...", end="", flush=True)
        t = time.monotonic()
        if name == "postgres":
            stop_postgres(state)
        stop_group(name, pid)
        if not quiet:
            print(f" {time.monotonic() - t:.1f} s", flush=True)
    # what is left?
    left = []
    for name in SERVICES:
        pid = alive(state, name)
        rec = recorded(state, name)
        if pid is not None:
            left.append(f"{name} (pid {pid}) still runs")
        elif rec and proc_stat(rec[0]) is None and group_members(rec[0]):
            left.append(f"{name}: processes {group_members(rec[0])} of its group still run")
    open_ports = listening_ports()
    for service, port in state.ports().items():
        if port in open_ports:
            left.append(f"port 127.0.0.1:{port} ({service}) still listens")
    if left:
        print("stack down: left running:\n  " + "\n  ".join(left), file=sys.stderr)
        return 1
    for name in SERVICES:
        with contextlib.suppress(FileNotFoundError):
            state.pidfile(name).unlink()
    if not quiet:
        print(f"stack down: nothing left running or listening (logs kept in {state.logs})")
    return 0


def status(state: State) -> int:
    ports = state.ports()
    if not ports:
        print(f"no stack in {state.dir}")
        return 1
    table = listening()
    where = {"postgres": f"127.0.0.1:{ports.get('postgres')}", "s3": f"http://127.0.0.1:{ports.get('s3')}",
             "mlflow": f"http://127.0.0.1:{ports.get('mlflow')}",
             "prefect-server": f"http://127.0.0.1:{ports.get('prefect')}/api",
             "prefect-worker": f"pool {POOL}", "dask-scheduler": f"tcp://127.0.0.1:{ports.get('dask')}"}
    code = 0
    for name in SERVICES:
        pid = alive(state, name)
        if pid is None:
            print(f"  {name:15} stopped")
            code = 1
            continue
        socks = sorted(sockets_of(group_members(pid) or [pid], table), key=lambda s: s[1])
        listen = ", ".join(f"{a}:{p}" for a, p in socks) or "-"
        print(f"  {name:15} pid {pid:<8} {where.get(name, ''):32} listens {listen}")
    if state.stack_env.exists():
        print(f"client env: set -a; . {os.path.relpath(state.stack_env, Path.cwd())}; set +a")
    return code


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    commands = (("up", "start the stack"), ("down", "stop the stack"), ("status", "what runs, where"))
    for name, help_ in commands:
        p = sub.add_parser(name, help=help_)
        p.add_argument("--state", type=Path, default=ROOT / ".stack",
                       help="state folder: logs, pids, data, credentials (default: .stack/ in the project)")
        if name == "up":
            p.add_argument("--credentials", type=Path,
                           help="a KEY=VALUE file with any of " + ", ".join(CREDENTIALS)
                           + " (the environment wins; what is missing is generated)")
    args = parser.parse_args(argv)
    state = State(args.state)
    try:
        if args.command == "up":
            return up(state, args.credentials)
        if args.command == "down":
            return down(state)
        return status(state)
    except StackError as e:
        print(f"stack {args.command}: {e}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
