"""Entry points of the DVC pipeline (dvc.yaml): one product line per call, workspace data.

    python -m flows.stages fit LINE        data/LINE        -> models/LINE/ (safetensors + manifest)
    python -m flows.stages evaluate LINE   models/LINE + data/LINE -> metrics/LINE.json, plots/LINE/
"""

from __future__ import annotations

import argparse
import shutil
import tempfile
import warnings
from pathlib import Path

warnings.filterwarnings("ignore", category=FutureWarning, module=r"(timm|anomalib)\.")


def main(argv: list[str] | None = None) -> None:
    from .config import load_params

    parser = argparse.ArgumentParser(prog="python -m flows.stages", description=__doc__)
    parser.add_argument("stage", choices=["fit", "evaluate"])
    parser.add_argument("line")
    parser.add_argument("--root", type=Path, default=Path("."))
    args = parser.parse_args(argv)
    params = load_params(args.root / "params.yaml").line(args.line)
    data = args.root / "data" / args.line
    model_path = args.root / "models" / args.line
    with tempfile.TemporaryDirectory(prefix=f"padim-{args.line}-") as work:
        if args.stage == "fit":
            from .data.store import folder_md5
            from .data.validation import validate_line
            from .model.build import save_model
            from .model.fit import fit_line

            # never fit on invalid data
            validate_line(data, params.data.min_train_images, params.data.min_validation_images)
            model, _ = fit_line(params, data, Path(work))
            shutil.rmtree(model_path, ignore_errors=True)
            save_model(model, params, model_path, folder_md5(data))  # the data it fitted, as DVC hashes it
        else:
            from .model.build import load_model
            from .model.evaluate import evaluate, write_metrics

            evaluation = evaluate(load_model(model_path), params, data, Path(work))
            write_metrics(evaluation, args.root / "metrics" / f"{args.line}.json")
            plots = args.root / "plots" / args.line
            shutil.rmtree(plots, ignore_errors=True)
            plots.mkdir(parents=True)
            for figure in evaluation.figures.values():
                shutil.copy(figure, plots / figure.name)


if __name__ == "__main__":
    main()
