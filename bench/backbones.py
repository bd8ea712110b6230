"""EfficientNet-Lite0, Lite1 and Lite2 side by side on MTD, under the default option set.

Each backbone with its packaged ImageNet weights (padim_plugin.backbones) and default layers (the
stages at strides 4, 8 and 16), 100 channels, 256 px, batch 32: fitted on MTD's 762 normal
training images and scored on its 582 test images by padim_vs_anomalib.py's worker, each in a
fresh process. Reported: image AUROC, pixel AUROC and AUPRO (FPR <= 0.3), fit seconds, fit RSS
growth, test forward images/s, and the size of the saved model (padim_plugin.artifact, float32);
each with its ratio to Lite0's from the same run.

    .venv/bin/python bench/backbones.py [--data PATH] [--out FILE]
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path
from typing import Any

BENCH = Path(__file__).resolve().parent
sys.path[:0] = [str(BENCH.parent), str(BENCH)]

import padim_vs_anomalib as pva  # noqa: E402
from artifact_size import folder_bytes, with_fitted_shapes  # noqa: E402

from padim_plugin.artifact import save_artifact  # noqa: E402

BACKBONES = ("efficientnet_lite0", "efficientnet_lite1", "efficientnet_lite2")
N_FEATURES, SIZE = 100, 256
COLUMNS = (("image AUROC", "image_auroc", ".4f"), ("pixel AUROC", "pixel_auroc", ".4f"),
           ("AUPRO", "pixel_aupro", ".4f"), ("fit s", "fit_s", ".1f"),
           ("fit RSS growth MiB", "fit_memory_growth_mib", ".0f"),
           ("forward img/s", "forward_images_per_s", ".1f"), ("model MiB", "model_mib", ".1f"))


def measure(backbone: str, data: Path) -> dict[str, Any]:
    spec = pva.RunSpec(model="ours", backbone=backbone, n_train=762, device="cpu", synthetic=False,
                       data=str(data), max_test=None, batch_size=32, threads=pva.available_cores(),
                       repeats=1)
    row = pva.run_isolated(spec)
    with tempfile.TemporaryDirectory() as scratch:
        saved = save_artifact(with_fitted_shapes(backbone, N_FEATURES, SIZE), Path(scratch) / "model", SIZE)
        row["model_mib"] = folder_bytes(saved) / 2**20
    row["fit_memory_growth_mib"] = row["fit_memory_growth_bytes"] / 2**20
    return row


def table(rows: dict[str, dict[str, Any]]) -> str:
    lines = ["| backbone | " + " | ".join(f"{title} (/ Lite0)" for title, _, _ in COLUMNS) + " |",
             "|---|" + "---:|" * len(COLUMNS)]
    reference = rows[BACKBONES[0]]
    for backbone, row in rows.items():
        cells = [f"{row[key]:{fmt}} ({row[key] / reference[key]:.3f})" for _, key, fmt in COLUMNS]
        lines.append(f"| {backbone} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", type=Path, default=pva.DEFAULT_DATA)
    parser.add_argument("--out", type=Path, default=BENCH / "results" / "backbones.json")
    args = parser.parse_args(argv)
    rows = {}
    for backbone in BACKBONES:
        rows[backbone] = measure(backbone, args.data)
        print(backbone, json.dumps({k: v for k, v in rows[backbone].items() if not isinstance(v, list)}),
              flush=True)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(rows, indent=2) + "\n")
    print(f"\nMTD: fit on 762, 582 test images; {N_FEATURES} channels @ {SIZE} px, batch 32,"
          f" {pva.available_cores()} threads\n")
    print(table(rows))


if __name__ == "__main__":
    main()
