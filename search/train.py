"""`python -m search.train CONFIG [--set KEY=VALUE ...] [--out DIR]`: train one configuration.

No Ray: prints a line per epoch and writes `checkpoint.pt`, `metrics.json` and the
resolved `config.yaml` to the output folder. This is also how the best config of a
search (`runs/NAME/best.yaml`) is retrained for deployment.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import torch

from search import config as config_
from search import preflight, user_code
from search.cli import run_main
from search.trial.trainer import train


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m search.train", description=__doc__)
    p.add_argument("config", help="YAML config (a search config also works: its fixed values)")
    p.add_argument("--set", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config field, e.g. --set optimizer.lr=0.01")
    p.add_argument("--out", help="output folder (default: runs/train/<config name>)")
    return p.parse_args(argv)


def epoch_line(metrics: dict) -> str:
    """`epoch   3  train_loss 0.4012  val_loss 0.3310  val_acc 0.9109  lr 1.00e-03  0.21s
    6722 img/s`: the trainer's numbers and every validation metric the task reports."""
    scores = "".join(f"  {k} {v:.4f}" for k, v in metrics.items() if k.startswith("val_"))
    rate = next(((k, v) for k, v in metrics.items() if k.endswith("_per_s")), None)
    unit = "img" if rate and rate[0] == "images_per_s" else rate[0].removesuffix("_per_s")
    return (f"epoch {metrics['epoch']:3d}  train_loss {metrics['train_loss']:.4f}{scores}  "
            f"lr {metrics['lr']:.2e}  {metrics['epoch_s']:.2f}s  {rate[1]:.0f} {unit}/s"
            + ("  DIVERGED" if metrics["diverged"] else ""))


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    cfg = config_.load(args.config, args.set).trial()
    if user_code.plugins(cfg):  # a plug-in beside the config, or in the folders of `code`
        user_code.use_folders([Path(args.config).parent, *cfg.code])
        preflight.check(cfg)
    out = Path(args.out or Path("runs") / "train" / Path(args.config).stem)
    history: list[dict] = []

    def report(metrics: dict, checkpoint: dict | None) -> None:
        history.append(metrics)
        print(epoch_line(metrics), flush=True)
        if checkpoint is not None:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, out / "checkpoint.pt")

    final = train(cfg, report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_.dump(cfg))
    (out / "metrics.json").write_text(json.dumps(history, indent=1))
    status = "diverged" if final.get("diverged") else "done"
    scores = "  ".join(f"{k} {v:.4f}" for k, v in final.items() if k.startswith("val_"))
    print(f"{status}: {scores or 'no validation metrics'}; wrote {out}/")
    return 1 if final.get("diverged") else 0


if __name__ == "__main__":
    run_main(main)
