"""Fit StreamingPadim with Lightning on CPU, once per option set, and save each fitted state.

In this process (the single-device reference):   fit_all(DATA_DIR, OUT_DIR, OPTION_SETS, devices=1)
On N gloo processes started by torch's launcher, which fit every option set in turn:
    torchrun --nproc-per-node N tests/ddp_fit.py DATA_DIR OUT_DIR '{"name": {options}, ...}'
Each option set's state (without the backbone) lands in OUT_DIR/<name>.pt.
"""

from __future__ import annotations

import json
import os
import sys
from pathlib import Path

import torch
from anomalib.engine import Engine

from padim_plugin import StreamingDDPStrategy, StreamingPadim
from padim_plugin.datamodule import MVTecLayout


def fit_all(data_dir: Path, out_dir: Path, option_sets: dict[str, dict], devices: int) -> None:
    for name, options in option_sets.items():
        model = StreamingPadim(n_features=16, **options,
                               pre_processor=StreamingPadim.configure_pre_processor((64, 64)),
                               evaluator=False, visualizer=False)
        strategy = StreamingDDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
        # a workspace per rank: anomalib's Engine makes a versioned folder in it on every rank, and
        # two ranks making the same "v0" at once fail (seen once in CI)
        workspace = out_dir / f"{name}.root" / f"rank{os.environ.get('RANK', '0')}"
        engine = Engine(accelerator="cpu", devices=devices, strategy=strategy, logger=False,
                        default_root_dir=workspace, enable_progress_bar=False)
        engine.fit(model=model, datamodule=MVTecLayout(data_dir, train_batch_size=2, eval_batch_size=4))
        if engine.trainer.global_rank == 0:
            state = {k: v for k, v in model.model.state_dict().items() if "feature_extractor" not in k}
            torch.save(state, out_dir / f"{name}.pt")


if __name__ == "__main__":
    data, out, sets = sys.argv[1:]
    fit_all(Path(data), Path(out), json.loads(sets), devices=int(os.environ["WORLD_SIZE"]))
