"""Trials that span several workers: data-parallel training through Ray Train.

With `resources.workers_per_trial > 1` a Tune trial does not train itself: it drives a Ray
Train `TorchTrainer` whose workers train one configuration together.

- `ranks.py`: what one worker does differently from a single-process trial (its share of
  every batch, DDP, ZeRO-sharded Adam state, metrics summed over the ranks). Plain
  torch.distributed; `search.trial.trainer.train` takes it as `parallel`.
- `trial.py`: the Tune trial that runs the TorchTrainer, and the loop each worker runs.
- `placement.py`: whether a trial's workers fit on the cluster, and how many trials at once.

A trial of one worker never comes here: it is `search.trial.trainable.run_trial`, as before.
"""
