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
        print(
            f"epoch {metrics['epoch']:3d}  train_loss {metrics['train_loss']:.4f}  "
            f"val_loss {metrics['val_loss']:.4f}  val_acc {metrics['val_acc']:.4f}  "
            f"lr {metrics['lr']:.2e}  {metrics['epoch_s']:.2f}s  "
            f"{metrics['images_per_s']:.0f} img/s" + ("  DIVERGED" if metrics["diverged"] else ""),
            flush=True,
        )
        if checkpoint is not None:
            out.mkdir(parents=True, exist_ok=True)
            torch.save(checkpoint, out / "checkpoint.pt")

    final = train(cfg, report)
    out.mkdir(parents=True, exist_ok=True)
    (out / "config.yaml").write_text(config_.dump(cfg))
    (out / "metrics.json").write_text(json.dumps(history, indent=1))
    status = "diverged" if final.get("diverged") else "done"
    print(f"{status}: val_acc {final['val_acc']:.4f}; wrote {out}/")
    return 1 if final.get("diverged") else 0


if __name__ == "__main__":
    run_main(main)
