"""REST serving of a line's champion: requests/s and latency for 1 and 8 concurrent clients.

Starts ``mlflow models serve -m models:/padim-<line>@champion --env-manager local`` on 127.0.0.1
for a project that has a champion (``make demo`` makes one), then sends a fixed number of
requests, each one base64-encoded PNG from the line's test images (what a camera client sends),
from 1 and from 8 client threads; loopback only, bounded in count and time. Prints requests/s and
p50/p95 latency per concurrency, and the in-process scoring time of one image for reference::

    .venv/bin/python bench/serving.py --root . --line brick [--requests 64]
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import signal
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np

from flows.registry import Registry, model_name
from padim_plugin.mvtec import is_image

DEADLINE_S = 300  # the whole load run stops by then, whatever is left


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def wait_until_up(url: str, timeout_s: float = 180) -> None:
    started = time.monotonic()
    while time.monotonic() - started < timeout_s:
        try:
            urllib.request.urlopen(f"{url}/ping", timeout=2)
            return
        except OSError:
            time.sleep(1)
    raise RuntimeError(f"mlflow models serve did not answer {url}/ping within {timeout_s} s")


def request(url: str, body: bytes) -> float:
    """One /invocations call; its latency in seconds."""
    started = time.perf_counter()
    call = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=60) as response:
        json.loads(response.read())
    return time.perf_counter() - started


def load(url: str, bodies: list[bytes], clients: int, deadline: float) -> dict[str, float]:
    """Send every body once from ``clients`` threads; requests/s and latency percentiles."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        latencies = [latency for latency in pool.map(lambda body: request(url, body)
                                                     if time.monotonic() < deadline else np.nan, bodies)]
    wall = time.perf_counter() - started
    done = [latency for latency in latencies if not np.isnan(latency)]
    quantiles = statistics.quantiles(done, n=20)
    return {"clients": clients, "requests": len(done), "rps": len(done) / wall,
            "p50_ms": 1000 * statistics.median(done), "p95_ms": 1000 * quantiles[18]}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--root", type=Path, default=Path("."), help="project with a champion")
    parser.add_argument("--line", required=True)
    parser.add_argument("--requests", type=int, default=64, help="requests per concurrency level")
    args = parser.parse_args(argv)
    registry = Registry(args.root)
    if registry.champion(args.line) is None:
        raise SystemExit(f"{model_name(args.line)} has no @champion in {registry.uri}")
    images = sorted(p for p in (args.root / "data" / args.line / "test").rglob("*") if is_image(p))
    bodies = [json.dumps({"inputs": {"image": [base64.b64encode(p.read_bytes()).decode()]}}).encode()
              for p in (images * args.requests)[: args.requests]]
    model = mlflow.pyfunc.load_model(f"models:/{model_name(args.line)}@champion")
    payload = {"image": [base64.b64encode(images[0].read_bytes()).decode()]}
    model.predict(payload)
    started = time.perf_counter()
    for _ in range(8):
        model.predict(payload)
    in_process_ms = 1000 * (time.perf_counter() - started) / 8

    port, bin_dir = free_port(), Path(sys.executable).parent
    env = dict(os.environ, PATH=f"{bin_dir}{os.pathsep}{os.environ['PATH']}",
               MLFLOW_TRACKING_URI=registry.uri)
    command = [str(bin_dir / "mlflow"), "models", "serve", "-m", f"models:/{model_name(args.line)}@champion",
               "--env-manager", "local", "-h", "127.0.0.1", "-p", str(port)]
    server = subprocess.Popen(command, env=env, start_new_session=True,
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_until_up(url)
        request(url, bodies[0])  # warm-up
        deadline = time.monotonic() + DEADLINE_S
        rows = [load(url, bodies, clients, deadline) for clients in (1, 8)]
    finally:
        os.killpg(server.pid, signal.SIGTERM)
        server.wait(timeout=60)
    print(f"{model_name(args.line)}@champion, one base64 PNG per request, {len(images)} distinct images")
    print("| clients | requests | requests/s | p50 ms | p95 ms |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['rps']:.1f} | {row['p50_ms']:.1f} |"
              f" {row['p95_ms']:.1f} |")
    print(f"in-process pyfunc, one image: {in_process_ms:.1f} ms ({1000 / in_process_ms:.1f} images/s)")


if __name__ == "__main__":
    main()
