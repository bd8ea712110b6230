"""Fit StreamingPadim with Lightning on N CPU processes (gloo) and save the fitted state.

Run as a script (Lightning's DDP launcher re-runs it per rank):
    python tests/ddp_fit.py DATA_DIR OUT_FILE DEVICES [MODEL_OPTIONS_JSON]
"""

import json
import sys

import torch
from anomalib.engine import Engine

from padim_plugin import StreamingDDPStrategy, StreamingPadim
from padim_plugin.datamodule import MVTecLayout

if __name__ == "__main__":
    data_dir, out_file, devices = sys.argv[1], sys.argv[2], int(sys.argv[3])
    options = json.loads(sys.argv[4]) if len(sys.argv) > 4 else {}
    datamodule = MVTecLayout(data_dir, train_batch_size=2, eval_batch_size=4)
    model = StreamingPadim(
        n_features=16,
        **options,
        pre_processor=StreamingPadim.configure_pre_processor((64, 64)),
        evaluator=False,
        visualizer=False,
    )
    strategy = StreamingDDPStrategy(process_group_backend="gloo") if devices > 1 else "auto"
    engine = Engine(
        accelerator="cpu", devices=devices, strategy=strategy, logger=False,
        default_root_dir=f"{out_file}.root", enable_progress_bar=False,
    )
    engine.fit(model=model, datamodule=datamodule)
    if engine.trainer.global_rank == 0:
        state = model.model.state_dict()
        torch.save({k: v for k, v in state.items() if "feature_extractor" not in k}, out_file)
