"""End-to-end pretraining throughput: ``mixmask pretrain`` with a config (default: A2MIM's ImageNet-100 one, ResNet-50
at 224 px) on a generated class folder of JPEGs, in images per second from the run's median step time (loading, the copy to the
device and normalisation included; the first steps, which compile or warm up, fall outside the median).

    python benchmarks/train_throughput.py --modes eager compiled --json throughput.json     # a GPU machine
    python benchmarks/train_throughput.py --config configs/pretrain/a2mim_tiny_shapesx.yaml --images 512 --batch 32

The JPEGs (``--jpeg-px`` on the shorter side, 4:3, quality 90) are written once to a temporary folder, 100 classes,
and each mode (eager, compiled: ``train.compile``) with each decoder (PIL in the loader's workers, DALI) trains one
epoch on them.
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from pathlib import Path

from loader import write_jpegs  # benchmarks/loader.py
from mixmask.config import load_config
from mixmask.tasks.pretrain import pretrain

ROOT = Path(__file__).resolve().parents[1]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--images", type=int, default=12_800, help="training images (default: 50 steps of 256)")
    parser.add_argument("--jpeg-px", type=int, default=500, help="shorter side of the generated JPEGs")
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--config", default=str(ROOT / "configs/pretrain/a2mim_r50_in100.yaml"))
    parser.add_argument("--modes", nargs="+", choices=["eager", "compiled"], default=["eager"])
    parser.add_argument("--decoders", nargs="+", choices=["pil", "dali"], default=["pil"], help="data.decoder")
    parser.add_argument("--json", default=None, metavar="FILE", help="also write the result to FILE")
    args = parser.parse_args()
    rows = []
    with tempfile.TemporaryDirectory() as temp:
        data = Path(temp) / "data"
        write_jpegs(data / "train", args.images, args.jpeg_px, classes=100)
        write_jpegs(data / "val", 100, args.jpeg_px, classes=100)
        for mode, decoder in [(m, d) for d in args.decoders for m in args.modes]:
            cfg = load_config(
                args.config,
                [
                    "data.dataset=folder",
                    f"data.root={data}",
                    f"data.decoder={decoder}",
                    "train.epochs=1",
                    f"train.batch_size={args.batch}",
                    f"train.compile={str(mode == 'compiled').lower()}",
                    "train.reconstruction_every_epochs=0",
                    "optim.warmup_epochs=0.1",
                ],
            )
            run = pretrain(cfg, out=Path(temp) / f"{mode}_{decoder}")
            results = json.loads((run / "results.json").read_text())
            per_step = results["seconds"]["per_step"]
            rows.append(
                {
                    "config": args.config,
                    "backbone": cfg.model.backbone,
                    "size": cfg.data.image_size,
                    "batch": args.batch,
                    "jpeg_px": args.jpeg_px,
                    "decoder": decoder,
                    "compiled": results["compiled"],
                    "steps": results["steps"],
                    "median_step_s": per_step,
                    "img_s": args.batch / per_step,
                }
            )
            print(json.dumps(rows[-1]), flush=True)
    if args.json:
        Path(args.json).write_text(json.dumps(rows, indent=1) + "\n")


if __name__ == "__main__":
    sys.exit(main())
