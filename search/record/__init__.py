"""What a search leaves behind, written by the driver alone.

    tracking.py            MLflow parent and child runs, through one ordered retry queue
    results.py             outcomes and ranking, best.yaml, the champion model, the summary
    plots.py               learning curves, metric against each hyperparameter, importances
    progress.py            the live output: a line per trial event
    store.py               MLflow URIs (checked, redacted) and the champion's names
    checkpoint_janitor.py  deleting checkpoints that no stored snapshot names any more

Runs only in the driver process: nothing here is pickled to a worker. May import MLflow,
matplotlib, Optuna, Ray Tune's driver-side API, `search.config`, `search.space`, and
`search.trial` (to read a trial's checkpoint); never `search.deploy`.
"""
