"""REST serving of a line's champion: requests/s and latency for 1 and 8 concurrent clients.

Starts ``mlflow models serve -m models:/padim-<line>@champion --env-manager local`` on 127.0.0.1
for a project that has a champion (``make demo`` makes one), then sends a fixed number of
requests, each one base64-encoded PNG from the line's test images (what a camera client sends),
from 1 and from 8 client threads; loopback only, bounded in count and time. Each load runs twice:
with the default compact reply (score and label), and asking for the map as values (what every
reply carried before). Prints requests/s, p50/p95 latency and reply bytes per reply kind and
concurrency, and the in-process scoring time of one image for reference::

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

from flows.registry.registry import Registry, model_name
from padim_plugin.mvtec import is_image

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # tests/ is not an installed package
from tests.serving import mlflow_server  # noqa: E402

DEADLINE_S = 300  # the whole load run stops by then, whatever is left


# reply kind -> the request's params
REPLIES = {"score and label (default)": {}, "map as values (before)": {"anomaly_map": "values"}}


def request(url: str, body: bytes) -> tuple[float, int]:
    """One /invocations call; its latency in seconds and the reply's size in bytes."""
    started = time.perf_counter()
    call = urllib.request.Request(f"{url}/invocations", body, {"Content-Type": "application/json"})
    with urllib.request.urlopen(call, timeout=60) as response:
        reply = response.read()
    json.loads(reply)
    return time.perf_counter() - started, len(reply)


def load(url: str, bodies: list[bytes], clients: int, deadline: float) -> dict[str, float]:
    """Send every body once from ``clients`` threads; requests/s and latency percentiles."""
    started = time.perf_counter()
    with ThreadPoolExecutor(max_workers=clients) as pool:
        answers = list(pool.map(lambda body: request(url, body) if time.monotonic() < deadline else None,
                                bodies))
    wall = time.perf_counter() - started
    done = [answer for answer in answers if answer is not None]
    if len(done) < 2:
        raise RuntimeError(f"only {len(done)} request(s) finished before the {DEADLINE_S} s deadline")
    latencies = [latency for latency, _ in done]
    quantiles = statistics.quantiles(latencies, n=20)
    return {"clients": clients, "requests": len(done), "rps": len(done) / wall,
            "p50_ms": 1000 * statistics.median(latencies), "p95_ms": 1000 * quantiles[18],
            "reply_bytes": statistics.median(size for _, size in done)}


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
    encoded = [base64.b64encode(p.read_bytes()).decode() for p in (images * args.requests)[: args.requests]]
    bodies = {reply: [json.dumps({"inputs": {"image": [image]}, "params": params}).encode()
                      for image in encoded] for reply, params in REPLIES.items()}
    model = mlflow.pyfunc.load_model(f"models:/{model_name(args.line)}@champion")
    payload = {"image": encoded[:1]}
    in_process_ms = {}
    for reply, params in REPLIES.items():
        model.predict(payload, params=params)
        started = time.perf_counter()
        for _ in range(8):
            model.predict(payload, params=params)
        in_process_ms[reply] = 1000 * (time.perf_counter() - started) / 8

    with tempfile.TemporaryDirectory() as scratch, mlflow_server(
            f"models:/{model_name(args.line)}@champion", registry.uri, Path(scratch) / "server.log") as url:
        request(url, bodies[next(iter(REPLIES))][0])  # warm-up
        deadline = time.monotonic() + DEADLINE_S
        rows = [(reply, load(url, bodies[reply], clients, deadline))
                for clients in (1, 8) for reply in REPLIES]
    print(f"{model_name(args.line)}@champion, one base64 PNG per request, {len(images)} distinct images")
    print("| reply | clients | requests | requests/s | p50 ms | p95 ms | reply bytes |\n"
          "|---|---:|---:|---:|---:|---:|---:|")
    for reply, row in rows:
        print(f"| {reply} | {row['clients']} | {row['requests']} | {row['rps']:.1f} | {row['p50_ms']:.1f} |"
              f" {row['p95_ms']:.1f} | {row['reply_bytes']:.0f} |")
    for reply, milliseconds in in_process_ms.items():
        print(f"in-process pyfunc, one image, {reply}: {milliseconds:.1f} ms")


if __name__ == "__main__":
    main()
