"""What runs inside a Ray worker process: one trial, from its sample to its last report.

    trainable.py    the Tune trial: the trainer with Ray's report and checkpoint hooks, and
                    the hook that warms a worker process as it starts
    warm.py         what a reused worker process keeps between trials, and what it drops
    trainer.py      train(cfg, report): model, data, optim.Adam, schedule; also `search.train`'s
    data.py         datasets as tensors on the device, augmentation there
    user_data.py    image folders (decoded once, cached) and data functions
    checkpoints.py  when a trial writes a checkpoint
    distributed/    trials over several workers (Ray Train, DDP, ZeRO-sharded Adam)

May import: torch, Ray's trial-side API (tune.report, ray.train), `models`, `optim`, and
from `search` the config schema (`search.config`) and the space (`search.space`). Never
MLflow, `search.record` or `search.deploy`: a trial process stays cheap to import, and the
driver alone writes the record (tests/test_layout.py reads the imports to check this).
"""
