"""Kill the driver of a real search at many points, resume it, and check the record.

    python -m bench.resume_fuzz                       # 3 seeds x every kill point
    python -m bench.resume_fuzz --seeds 1 --points start,epochs:12,champion
    python -m bench.resume_fuzz --images   # the trials read real PNG files (imagefolder)

Each run is a digits search (mlp, 8 epochs, 6 trials, 2 at a time, ASHA grace 1 and
reduction 2, the champion registered) tracked in a real `mlflow server` (SQLite, on
127.0.0.1) through a URI with a user and password, with Ray snapshotting every second
(TUNE_GLOBAL_CHECKPOINT_S=1). The driver is killed with SIGKILL at one point:

- `start`: as soon as Ray's tuner.pkl exists (before or at its first snapshot);
- `epochs:K`: once MLflow holds K epochs of val_acc (between snapshots, trials running);
- `end`: once the plots are being drawn (every trial ended, Ray's final snapshot taken);
- `champion`: once the champion's model is being logged (registration under way).

Then `python -m search.run ... --resume` must exit 0, and `check` must find nothing: every
trial of Ray's final experiment state has exactly one MLflow run and no other run exists;
each run's epochs are the epochs of the trial's result.json, each once; its outcome tag
is the one Ray's record gives; the parent run is FINISHED; the password is nowhere in
the storage folder or the MLflow server's files. tests/test_resume_fuzz.py runs a small
fixed set of these points.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from bench.mlflow_server import SECRET, MlflowServer, kill_group

ROOT = Path(__file__).resolve().parent.parent
POINTS = ("start", "epochs:3", "epochs:8", "epochs:14", "end", "champion")
EPOCHS = 8
DIGITS = "{dataset: digits}"
# The held-out check's shape: real image files, read and decoded by the trials.
IMAGES = "{dataset: imagefolder, root: ROOT, image_size: 16, channels: 1}"
CONFIG = f"""
data: DATA
model: {{name: mlp}}
train: {{epochs: {EPOCHS}, batch_size: 64}}
search: {{num_samples: 6, max_concurrent: 2, seed: SEED}}
scheduler: {{name: asha, grace_period: 1, reduction_factor: 2}}
mlflow: {{register_as: fuzz}}
"""


def reached(point: str, exp_dir: Path, server: MlflowServer, name: str,
            metric: str = "val_acc") -> bool:
    if point == "start":
        return (exp_dir / "tuner.pkl").exists()
    if point.startswith("epochs:"):
        return server.count(
            "select count(*) from metrics m join runs r on r.run_uuid = m.run_uuid "
            f"where m.key = '{metric}' and r.lifecycle_stage = 'active' and r.experiment_id = "
            f"(select experiment_id from experiments where name = '{name}')"
        ) >= int(point.split(":")[1])
    if point == "end":
        return (exp_dir / "plots").exists()
    if point == "champion":
        return server.count(
            "select count(*) from logged_models where experiment_id = "
            f"(select experiment_id from experiments where name = '{name}')") > 0
    raise ValueError(f"unknown kill point {point!r}")


def search(cwd: Path, name: str, server: MlflowServer, resume: bool) -> subprocess.Popen:
    """The search's driver, its output in cwd/NAME.log or NAME.resume.log."""
    # RAY_ADDRESS=local: the driver starts its own Ray, which its SIGKILL takes down with
    # it (a crash of the driver's machine), even where a Ray runs on this one already.
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TUNE_GLOBAL_CHECKPOINT_S": "1",
           "RAY_ADDRESS": "local"}
    with open(cwd / f"{name}{'.resume' if resume else ''}.log", "w") as log:
        return subprocess.Popen(
            [sys.executable, "-m", "search.run", "conf.yaml", "--name", name,
             "--tracking-uri", server.secret_uri, *(["--resume"] if resume else [])],
            cwd=cwd, env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)


def image_folder(cwd: Path) -> Path:
    """scikit-learn's digits as PNG files (conf/own_model/make_image_folder.py), once."""
    folder = cwd / "digits-png"
    if not folder.exists():
        subprocess.run([sys.executable, str(ROOT / "conf/own_model/make_image_folder.py"),
                        str(folder)], check=True, capture_output=True)
    return folder


def kill_and_resume(cwd: Path, server: MlflowServer, seed: int, point: str,
                    timeout_s: float = 300, images: bool = False,
                    config: str = CONFIG, metric: str = "val_acc") -> tuple[str, str]:
    """One kill point: (what happened, the resumed driver's output). 'killed' or
    'ended first' (the search finished before the point was reached). `config` is the
    search's YAML with SEED and DATA to fill in; `metric`, what `epochs:K` counts."""
    name = f"s{seed}-{point.replace(':', '')}"
    data = IMAGES.replace("ROOT", str(image_folder(cwd))) if images else DIGITS
    (cwd / "conf.yaml").write_text(config.replace("SEED", str(seed)).replace("DATA", data))
    exp_dir = cwd / "runs" / name
    driver = search(cwd, name, server, resume=False)
    deadline = time.monotonic() + timeout_s
    while not reached(point, exp_dir, server, name, metric):
        if driver.poll() is not None:
            return "ended first", (cwd / f"{name}.log").read_text()
        if time.monotonic() > deadline:
            kill_group(driver)
            raise TimeoutError(f"{name}: {point} not reached in {timeout_s:.0f} s")
        time.sleep(0.05)
    driver.send_signal(signal.SIGKILL)  # the driver alone, as a crash of its process
    driver.wait()
    resumed = search(cwd, name, server, resume=True)
    try:
        resumed.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        kill_group(resumed)
        raise
    out = (cwd / f"{name}.resume.log").read_text()
    if resumed.returncode != 0:
        raise AssertionError(f"{name}: --resume exited {resumed.returncode}\n{out[-3000:]}")
    return "killed", out


def ray_record(exp_dir: Path) -> dict[str, dict]:
    """Per trial of Ray's newest stored experiment state: its status and the epochs (with
    the last result) of its result.json."""
    # The newest by name, as Ray's restore picks it (a resumed search's storage holds the
    # killed session's file too, copied again at each sync).
    state = max(exp_dir.glob("experiment_state-*.json"), key=lambda p: p.name)
    trials = {}
    for json_state, _ in json.loads(state.read_text())["trial_data"]:
        trial = json.loads(json_state)
        trial_id = trial["trial_id"]
        rows = []
        result = exp_dir / f"trial_{trial_id}" / "result.json"
        if result.exists():
            rows = [json.loads(line) for line in result.read_text().splitlines() if line]
        rows = [r for r in rows if "epoch" in r and not r.get("error")]
        trials[trial_id] = {"status": trial["status"], "epochs": {r["epoch"] for r in rows},
                            "last": rows[-1] if rows else {}}
    return trials


def expected_outcome(record: dict, epochs: int = EPOCHS) -> str:
    last = record["last"]
    if record["status"] == "ERROR" or last.get("error"):
        return "failed"
    if last.get("diverged"):
        return "diverged"
    return "completed" if last.get("epoch", 0) >= epochs else "pruned"


def check(cwd: Path, server: MlflowServer, name: str, epochs: int = EPOCHS,
          metric: str = "val_acc") -> list[str]:
    """What differs between MLflow and Ray's record of search `name` (of `epochs` epochs a
    trial, reporting `metric`); [] when they agree."""
    from mlflow.tracking import MlflowClient

    problems = []
    client = MlflowClient(server.uri)
    exp = client.get_experiment_by_name(name)
    runs = client.search_runs([exp.experiment_id], max_results=1000)
    parents = [r for r in runs if r.data.tags.get("role") == "search"]
    kids = [r for r in runs if r.data.tags.get("mlflow.parentRunId")]
    if [p.info.status for p in parents] != ["FINISHED"]:
        problems.append(f"parent runs: {[p.info.status for p in parents]}")
    record = ray_record(cwd / "runs" / name)
    by_trial: dict[str, list] = {}
    for kid in kids:
        by_trial.setdefault(kid.data.tags.get("trial_id", "?"), []).append(kid)
    if sorted(by_trial) != sorted(record):
        problems.append(f"runs of trials {sorted(set(by_trial) ^ set(record))} differ")
    for trial_id, mine in by_trial.items():
        if len(mine) != 1:
            problems.append(f"{trial_id}: {len(mine)} runs")
        if trial_id not in record:
            continue
        run, ray = mine[0], record[trial_id]
        if ray["status"] not in ("TERMINATED", "ERROR"):
            problems.append(f"{trial_id}: Ray left it {ray['status']}")
        steps = [m.step for m in client.get_metric_history(run.info.run_id, metric)]
        if len(steps) != len(set(steps)):
            problems.append(f"{trial_id}: an epoch logged twice: {sorted(steps)}")
        if set(steps) != ray["epochs"]:
            problems.append(f"{trial_id}: MLflow epochs {sorted(set(steps))} != Ray's "
                            f"{sorted(ray['epochs'])}")
        if run.data.tags.get("outcome") != expected_outcome(ray, epochs):
            problems.append(f"{trial_id}: outcome {run.data.tags.get('outcome')} != "
                            f"{expected_outcome(ray, epochs)}")
    leaked = [str(p) for folder in (cwd / "runs" / name, server.folder)
              for p in folder.rglob("*") if p.is_file() and SECRET.encode() in p.read_bytes()]
    if leaked:
        problems.append(f"the password is in {leaked}")
    return problems


def main(argv: list[str] | None = None) -> int:
    import tempfile

    p = argparse.ArgumentParser(prog="python -m bench.resume_fuzz", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--seeds", type=int, default=3)
    p.add_argument("--points", default=",".join(POINTS))
    p.add_argument("--images", action="store_true",
                   help="the digits as PNG files (imagefolder), not the bundled tensors")
    args = p.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="resume-fuzz-"))
    server = MlflowServer(work)
    tried = failed = 0
    try:
        for seed in range(1, args.seeds + 1):
            for point in args.points.split(","):
                start = time.monotonic()
                what, _ = kill_and_resume(work, server, seed, point, images=args.images)
                problems = check(work, server, f"s{seed}-{point.replace(':', '')}")
                tried += what == "killed"
                failed += bool(problems)
                print(f"seed {seed} {point:10s} {what:11s} {time.monotonic() - start:5.0f} s  "
                      + ("ok" if not problems else "; ".join(problems)), flush=True)
    finally:
        server.stop()
    print(f"{tried} kill points tried, {failed} runs with a difference (work: {work})")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
