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
import statistics
import sys
import tempfile
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import mlflow
import numpy as np

from flows.registry.registry import Registry, model_name
from padim_plugin.mvtec import is_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not an installed package
from tests.serving import mlflow_server  # noqa: E402

DEADLINE_S = 300  # the whole load run stops by then, whatever is left


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
    if len(done) < 2:
        raise RuntimeError(f"only {len(done)} request(s) finished before the {DEADLINE_S} s deadline")
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

    with tempfile.TemporaryDirectory() as scratch, mlflow_server(
            f"models:/{model_name(args.line)}@champion", registry.uri, Path(scratch) / "server.log") as url:
        request(url, bodies[0])  # warm-up
        deadline = time.monotonic() + DEADLINE_S
        rows = [load(url, bodies, clients, deadline) for clients in (1, 8)]
    print(f"{model_name(args.line)}@champion, one base64 PNG per request, {len(images)} distinct images")
    print("| clients | requests | requests/s | p50 ms | p95 ms |\n|---:|---:|---:|---:|---:|")
    for row in rows:
        print(f"| {row['clients']} | {row['requests']} | {row['rps']:.1f} | {row['p50_ms']:.1f} |"
              f" {row['p95_ms']:.1f} |")
    print(f"in-process pyfunc, one image: {in_process_ms:.1f} ms ({1000 / in_process_ms:.1f} images/s)")


if __name__ == "__main__":
    main()
