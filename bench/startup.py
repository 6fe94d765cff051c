"""Where a search's fixed cost goes: CPU seconds per process, up to the first epoch and to exit.

    python -m bench.startup                      # 3 runs of the bench.peers search
    python -m bench.startup --runs 1 --py-spy    # and a py-spy profile of the driver
    python -m bench.startup --attach             # with Ray kept up (`ray start --head`)

Runs `python -m search.run conf/digits.yaml` (12 trials, 2 at a time, seed 0: bench.peers'
search) in a fresh folder, a new MLflow SQLite database included, and samples every
process under it with psutil every 50 ms: each process's CPU time (user + system), by
role (the driver, Ray's GCS, raylet, agents and monitors, trial processes, idle
workers). It reports, per role, the CPU seconds spent before the first epoch result reached
the driver (the timestamp the driver logged it to MLflow with) and before the driver
exited, and the wall times from the start to the first epoch and from the last epoch to
exit. On 2 cores a CPU second before the
first epoch costs about half a second of wall. With --py-spy, the driver runs under
`py-spy record` (native frames off) and the top functions by own time are printed.
With --attach, `ray start --head --num-cpus 2` runs first (stopped at the end), and every
search attaches to it, as `python -m search.run` does when a Ray runs on this machine: what
a second search costs when Ray is kept up. Writes bench/startup.json.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import psutil

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf" / "digits.yaml"
OUT = Path(__file__).with_name("startup.json")
ROLES = (  # (role, a part of the command line that says it), first match wins
    ("driver", "search.run"),
    ("trial process", "ray::ImplicitFunc"),
    ("trial process", "ray::_Inner"),
    ("trial process", "ray::run_trial"),
    ("worker (idle)", "ray::IDLE"),
    ("worker (idle)", "default_worker.py"),
    ("gcs_server", "gcs_server"),
    ("raylet", "raylet"),
    ("dashboard agent", "dashboard/agent.py"),
    ("runtime-env agent", "runtime_env/agent"),
    ("api server (dashboard.py)", "dashboard/dashboard.py"),
    ("log monitor", "log_monitor.py"),
    ("autoscaler monitor", "autoscaler/_private/monitor.py"),
    ("py-spy", "py-spy"),
)


def role(proc: psutil.Process) -> str:
    try:
        line = " ".join(proc.cmdline()) or proc.name()
    except (psutil.NoSuchProcess, psutil.AccessDenied):
        return "?"
    return next((r for r, key in ROLES if key in line), "other: " + line[:40])


def epoch_times(db: Path) -> list[float]:
    """When each epoch result reached the driver: the timestamps of the val_acc values the
    driver logged to MLflow as each result arrived (as bench.peers reads them)."""
    import sqlite3

    with sqlite3.connect(db) as conn:
        rows = conn.execute("SELECT timestamp FROM metrics WHERE key = 'val_acc'").fetchall()
    return sorted(t / 1000 for (t,) in rows)


def one_run(work: Path, samples: int, sets: list[str], py_spy: bool) -> dict:
    cmd = [sys.executable, "-m", "search.run", str(CONF), "--name", "startup",
           "--storage-path", str(work / "runs"), "--tracking-uri",
           f"sqlite:///{work / 'mlflow.db'}", "--num-samples", str(samples),
           "--set", "search.seed=0", "--set", "search.max_concurrent=2",
           *[a for s in sets for a in ("--set", s)]]
    if py_spy:
        spy = Path(sys.executable).with_name("py-spy")
        cmd = [str(spy), "record", "--format", "raw", "-r", "50", "-o",
               str(work / "driver.spy"), "--", *cmd]
    env = {**os.environ, "PYTHONPATH": str(ROOT), "RAY_USAGE_STATS_ENABLED": "0",
           "MLFLOW_DISABLE_TELEMETRY": "true"}
    start = time.time()
    proc = subprocess.Popen(cmd, cwd=work, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    root = psutil.Process(proc.pid)
    cpu: dict[int, tuple[str, float]] = {}  # pid -> (role, cpu seconds at last sample)
    samples: list[tuple[float, dict[int, tuple[str, float]]]] = []
    while proc.poll() is None:
        try:
            procs = [root, *root.children(recursive=True)]
        except psutil.NoSuchProcess:
            break
        for p in procs:
            try:
                t = p.cpu_times()
                known = cpu.get(p.pid, ("?",))[0]
                # A worker's title changes from default_worker.py to ray::<what it runs>.
                now = role(p) if known in ("?", "worker (idle)") else known
                cpu[p.pid] = (now, t.user + t.system)
            except (psutil.NoSuchProcess, psutil.AccessDenied):
                pass
        samples.append((time.time(), dict(cpu)))
        time.sleep(0.05)
    out = proc.stdout.read()
    end = time.time()
    assert proc.returncode == 0, out[-3000:]
    epochs = epoch_times(work / "mlflow.db")
    first, last = (epochs[0], epochs[-1]) if epochs else (end, end)
    at_first = next((s for t, s in reversed(samples) if t <= first), {})
    by_role_first: dict[str, float] = {}
    by_role_exit: dict[str, float] = {}
    for pid, (r, c) in cpu.items():
        by_role_exit[r] = by_role_exit.get(r, 0.0) + c
        by_role_first[r] = by_role_first.get(r, 0.0) + at_first.get(pid, (r, 0.0))[1]
    return {"wall_s": end - start, "start_to_first_epoch_s": first - start,
            "last_epoch_to_exit_s": end - last, "cpu_to_first_epoch": by_role_first,
            "cpu_to_exit": by_role_exit, "spy": str(work / "driver.spy") if py_spy else None}


def top_functions(spy: Path, n: int = 25) -> list[tuple[str, float]]:
    """py-spy's raw (collapsed) stacks -> the functions with the most samples anywhere in
    the stack (inclusive), as a share of all samples."""
    counts: dict[str, int] = {}
    total = 0
    for line in spy.read_text().splitlines():
        stack, _, n_samples = line.rpartition(" ")
        k = int(n_samples)
        total += k
        for frame in set(stack.split(";")):
            counts[frame] = counts.get(frame, 0) + k
    ranked = sorted(counts.items(), key=lambda kv: -kv[1])[:n]
    return [(f, c / total) for f, c in ranked]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--samples", type=int, default=12)
    p.add_argument("--set", dest="sets", action="append", default=[], metavar="KEY=VALUE")
    p.add_argument("--py-spy", action="store_true")
    p.add_argument("--attach", action="store_true", help="keep one Ray up for every run")
    p.add_argument("--out", type=Path, default=OUT)
    args = p.parse_args(argv)
    results = []
    ray_cli = str(Path(sys.executable).with_name("ray"))
    if args.attach:
        subprocess.run([ray_cli, "start", "--head", "--num-cpus", "2", "--include-dashboard",
                        "false"], check=True, capture_output=True)
    try:
        _runs(args, results)
    finally:
        if args.attach:
            subprocess.run([ray_cli, "stop"], capture_output=True)
    _report(args, results)


def _runs(args: argparse.Namespace, results: list[dict]) -> None:
    for i in range(args.runs):
        with tempfile.TemporaryDirectory(prefix="startup-") as d:
            r = one_run(Path(d), args.samples, args.sets, args.py_spy)
            if r["spy"]:
                r["top"] = top_functions(Path(r["spy"]))
            results.append(r)
        print(f"run {i}: wall {r['wall_s']:.1f} s, start -> 1st epoch "
              f"{r['start_to_first_epoch_s']:.1f} s, last epoch -> exit "
              f"{r['last_epoch_to_exit_s']:.1f} s", flush=True)


def _report(args: argparse.Namespace, results: list[dict]) -> None:
    roles = sorted({k for r in results for k in r["cpu_to_exit"]},
                   key=lambda k: -statistics.median(r["cpu_to_first_epoch"].get(k, 0)
                                                    for r in results))
    print(f"\nCPU seconds by process role (median of {len(results)} runs)")
    print(f"{'role':<32} {'to 1st epoch':>12} {'to exit':>8}")
    for k in roles:
        a = statistics.median(r["cpu_to_first_epoch"].get(k, 0.0) for r in results)
        b = statistics.median(r["cpu_to_exit"].get(k, 0.0) for r in results)
        print(f"{k:<32} {a:>12.2f} {b:>8.2f}")
    tot_a = statistics.median(sum(r["cpu_to_first_epoch"].values()) for r in results)
    tot_b = statistics.median(sum(r["cpu_to_exit"].values()) for r in results)
    print(f"{'all':<32} {tot_a:>12.2f} {tot_b:>8.2f}")
    for key in ("wall_s", "start_to_first_epoch_s", "last_epoch_to_exit_s"):
        print(f"{key}: median {statistics.median(r[key] for r in results):.2f}")
    if results and results[-1].get("top"):
        print("\ndriver, py-spy (inclusive share of samples):")
        for f, share in results[-1]["top"]:
            print(f"  {share:6.1%}  {f[:110]}")
    args.out.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
