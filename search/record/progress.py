"""What a search prints while it runs: one line per trial event, through Python's logging.

    trial 3f2a1b0c started: lr=0.00506 beta1=0.975863 beta2=0.999837 eps=2.23e-10
    trial 3f2a1b0c pruned at epoch 2: val_acc 0.8663  [3/8 done, 2 running, best 0.9889, 6.1 s]

Ray's own per-trial tables (`--verbose`) print every reported key, eps as 0, for every
trial; here a line says what happened and the values keep their magnitude. The lines go to
the `search` logger, so a program that calls the search can route or silence them.
"""

from __future__ import annotations

import logging
import sys
import time

from ray import tune

from search.record.tracking import error_line, outcome
from search.space import fmt, sample_line, trial_params  # noqa: F401  (re-exported)

log = logging.getLogger("search.progress")


def setup_logging(verbose: bool) -> None:
    """The command line's logging: `search.*` lines to stdout; other libraries' chatter
    (Optuna's study creation, MLflow's registrations) shown only with `--verbose`.

    The `search` logger keeps its own handler: importing mlflow.pytorch calls
    `logging.basicConfig(level=ERROR)` on the root logger (MLflow 3.17), which would
    otherwise silence warnings such as "MLflow unreachable".
    """
    logger = logging.getLogger("search")
    if not any(isinstance(h, _Stdout) for h in logger.handlers):
        handler = _Stdout()
        handler.setFormatter(logging.Formatter("%(message)s"))
        logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    logger.propagate = False
    quiet = logging.INFO if verbose else logging.WARNING
    for name in ("optuna", "mlflow"):
        logging.getLogger(name).setLevel(quiet)


class _Stdout(logging.StreamHandler):
    """Writes to whatever sys.stdout is when a line is logged (tests and notebooks swap it)."""

    def __init__(self) -> None:
        super().__init__()

    @property
    def stream(self):
        return sys.stdout

    @stream.setter
    def stream(self, value) -> None:  # StreamHandler sets it; sys.stdout is used instead
        pass


class Progress(tune.Callback):
    """Logs each trial's start and end, with a running count and the best value so far."""

    def __init__(self, metric: str, mode: str, epochs: int, num_samples: int) -> None:
        self.metric, self.mode, self.epochs, self.num_samples = metric, mode, epochs, num_samples
        self.ended: dict[str, str] = {}  # trial id -> outcome
        self.seen: set[str] = set()  # trials whose start was logged
        self.best: tuple[float, str] | None = None
        self.start = time.monotonic()

    def on_trial_start(self, iteration, trials, trial, **info) -> None:
        if trial.trial_id in self.seen:  # a PBT member's next turn: its exploit was logged
            return
        self.seen.add(trial.trial_id)
        log.info("trial %s started: %s", trial.trial_id,
                 sample_line(trial_params(trial.config)))

    def on_trial_complete(self, iteration, trials, trial, **info) -> None:
        last = trial.last_result or {}
        how = outcome(last, self.epochs, error=False)
        value = last.get(self.metric)
        if how in ("completed", "pruned") and value is not None:
            better = self.best is None or (value > self.best[0] if self.mode == "max"
                                           else value < self.best[0])
            if better:
                self.best = (value, trial.trial_id)
        if how == "failed":  # a deterministic error the trial reported (not retried)
            self._ended(trial, how, f"failed: {last.get('error')}", trials)
            return
        detail = {
            "completed": f"completed {last.get('epoch', '?')} epochs",
            "pruned": f"pruned at epoch {last.get('epoch', '?')}",
            "diverged": f"diverged at epoch {last.get('epoch', '?')}",
        }[how]
        shown = f": {self.metric} {value:.4f}" if isinstance(value, float) else ""
        self._ended(trial, how, f"{detail}{shown}", trials)

    def on_trial_error(self, iteration, trials, trial, **info) -> None:
        self._ended(trial, "failed", f"failed: {error_line(trial.get_error())}", trials)

    def _ended(self, trial, how: str, detail: str, trials) -> None:
        self.ended[trial.trial_id] = how
        running = sum(t.status == "RUNNING" for t in trials if t.trial_id not in self.ended)
        best = f", best {self.best[0]:.4f}" if self.best else ""
        log.info("trial %s %s  [%d/%d done, %d running%s, %.1f s]", trial.trial_id, detail,
                 len(self.ended), self.num_samples, running, best,
                 time.monotonic() - self.start)
