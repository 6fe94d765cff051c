"""Adam step time: our implementations side by side with torch.optim.Adam, in one run.

    python -m bench.optim            # CPU: ~3 min; CUDA: adds 100M and 1B params
    python -m bench.optim --quick    # a smoke run: fewer sizes and steps

For each parameter set (ResNet-18's 62 tensors, 11.2M params; one flat tensor of 1M, 10M,
...) every implementation steps the *same* params and grads (each keeps its own state), in
round-robin order, so a slow phase of a shared machine hits all of them alike; each gets a
share of a time budget (at least 5 and at most 400 timed steps). Reported per
implementation: the median (and best) step time after warm-up, params/s, and achieved
memory traffic in GB/s under the traffic model

    bytes/param = 12 (read param and grad, write param) + 2 x 2 x state bytes (read and
                  write exp_avg and exp_avg_sq)

i.e. 28 for fp32 state, 20 for bf16, ~16.1 for int8 (codes + per-256 fp32 scales); and the
ratio to torch's implementation of the same kind (single-tensor, foreach or fused). On CUDA
a device-to-device copy gives the bandwidth ceiling. The first step (state creation and,
for fused on CPU, torch.compile) is reported separately. Writes bench/optim.json with the
same rows as the printed table.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch

import models
import optim

OUT = Path(__file__).with_name("optim.json")
STATE_BYTES = {"fp32": 4.0, "bf16": 2.0, "int8": 1.0 + 4.0 / 256}


@dataclass(frozen=True)
class Impl:
    """One contestant: who wrote it, which kind of loop, how it stores its moments."""

    owner: str  # "ours" or "torch"
    kind: str  # "single", "foreach" or "fused"
    state_dtype: str = "fp32"

    @property
    def name(self) -> str:
        suffix = "" if self.state_dtype == "fp32" else f"/{self.state_dtype}"
        return f"{self.owner} {self.kind}{suffix}"

    def build(self, params: list[torch.Tensor]) -> torch.optim.Optimizer:
        flags = {
            "single": {"foreach": False},
            "foreach": {"foreach": True},
            "fused": {"fused": True},
        }[self.kind]
        if self.owner == "torch":
            return torch.optim.Adam(params, lr=1e-4, **flags)
        return optim.Adam(params, lr=1e-4, state_dtype=self.state_dtype, **flags)


IMPLS = [
    Impl("torch", "single"),
    Impl("torch", "foreach"),
    Impl("torch", "fused"),
    Impl("ours", "single"),
    Impl("ours", "foreach"),
    Impl("ours", "fused"),
    Impl("ours", "single", "bf16"),
    Impl("ours", "fused", "bf16"),
    Impl("ours", "single", "int8"),
    Impl("ours", "fused", "int8"),
]


@dataclass
class Row:
    params: str
    numel: int
    impl: str
    step_ms: float
    best_ms: float
    steps: int
    params_per_s: float
    gb_per_s: float
    ratio_to_torch: float | None
    first_step_s: float


def param_sets(device: torch.device, quick: bool) -> dict[str, list[torch.Size]]:
    """Shapes to benchmark: ResNet-18's (CIFAR variant) and single flat tensors."""
    resnet = [p.shape for p in models.build("resnet18", 10, 3).parameters()]
    sizes = {"resnet18": resnet, "flat 1M": [torch.Size([10**6])]}
    if not quick:
        sizes["flat 10M"] = [torch.Size([10**7])]
        if device.type == "cuda":
            sizes["flat 100M"] = [torch.Size([10**8])]
            sizes["flat 1B"] = [torch.Size([10**9])]
    return sizes


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def timed(fn: Callable[[], object], device: torch.device) -> float:
    sync(device)
    start = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - start


def fits(numel: int, impls: list[Impl], device: torch.device) -> bool:
    """Whether all impls' state for `numel` params fits at once (else run one at a time)."""
    if device.type != "cuda":
        return True
    need = numel * (8 + sum(4 * STATE_BYTES[i.state_dtype] for i in impls))
    return need < 0.8 * torch.cuda.mem_get_info(device)[0]


def measure(
    shapes: list[torch.Size],
    impls: list[Impl],
    device: torch.device,
    budget_s: float,
    steps: tuple[int, int],
    warmup: int,
) -> dict[Impl, tuple[list[float], float]]:
    """Step times of each impl and its first-step time, all on one set of params and grads.

    After warm-up each impl takes timed steps until it has spent `budget_s / len(impls)`
    seconds, within `steps` = (fewest, most), so a 1-second int8 step and a 5-ms fused
    step are both measured without either dominating the run. Steps go round-robin across
    the impls: a slow phase of a shared machine hits all of them.
    """
    g = torch.Generator(device=device).manual_seed(0)
    params = [torch.randn(s, device=device, generator=g) for s in shapes]
    for p in params:
        p.grad = torch.randn(p.shape, device=device, generator=g)
    optimizers = {impl: impl.build(params) for impl in impls}
    first = {impl: timed(opt.step, device) for impl, opt in optimizers.items()}
    for opt in optimizers.values():
        # Fewer warm-up steps for a slow impl: its timed steps matter more.
        spent = 0.0
        for _ in range(warmup):
            spent += timed(opt.step, device)
            if spent > 1.0:
                break
    share = budget_s / len(impls)
    times: dict[Impl, list[float]] = {impl: [] for impl in impls}

    def wants_more(impl: Impl) -> bool:
        done = times[impl]
        return len(done) < steps[0] or (sum(done) < share and len(done) < steps[1])

    while pending := [impl for impl in impls if wants_more(impl)]:
        for impl in pending:
            times[impl].append(timed(optimizers[impl].step, device))
    return {impl: (times[impl], first[impl]) for impl in impls}


def copy_bandwidth(device: torch.device, numel: int = 2 * 10**8) -> float:
    """Device-to-device copy in GB/s (bytes read + written): the ceiling for a fused step."""
    src = torch.empty(numel, device=device)
    dst = torch.empty_like(src)
    for _ in range(3):
        dst.copy_(src)
    best = min(timed(lambda: dst.copy_(src), device) for _ in range(10))
    return 2 * src.numel() * src.element_size() / best / 1e9


def rows_for(
    label: str,
    shapes: list[torch.Size],
    device: torch.device,
    budget_s: float,
    steps: tuple[int, int],
    warmup: int,
) -> list[Row]:
    numel = sum(s.numel() for s in shapes)
    if fits(numel, IMPLS, device):
        results = measure(shapes, IMPLS, device, budget_s, steps, warmup)
    else:
        results = {}
        for impl in IMPLS:
            share = budget_s / len(IMPLS)
            results.update(measure(shapes, [impl], device, share, steps, warmup))
            if device.type == "cuda":
                torch.cuda.empty_cache()
    medians = {impl: statistics.median(t) for impl, (t, _) in results.items()}
    torch_time = {impl.kind: medians[impl] for impl in IMPLS if impl.owner == "torch"}
    rows = []
    for impl in IMPLS:
        median = medians[impl]
        traffic = numel * (12 + 4 * STATE_BYTES[impl.state_dtype])
        rows.append(
            Row(
                params=label,
                numel=numel,
                impl=impl.name,
                step_ms=round(median * 1e3, 3),
                best_ms=round(min(results[impl][0]) * 1e3, 3),
                steps=len(results[impl][0]),
                params_per_s=round(numel / median),
                gb_per_s=round(traffic / median / 1e9, 2),
                ratio_to_torch=None
                if impl.owner == "torch"
                else round(median / torch_time[impl.kind], 3),
                first_step_s=round(results[impl][1], 2),
            )
        )
    return rows


def table(rows: list[Row]) -> str:
    head = f"{'params':<10} {'implementation':<18} {'median ms':>10} {'best ms':>9} {'n':>4} "
    head += f"{'Mparam/s':>9} {'GB/s':>6} {'vs torch':>8} {'1st step s':>10}"
    lines = [head, "-" * len(head)]
    for r in rows:
        ratio = "" if r.ratio_to_torch is None else f"{r.ratio_to_torch:.3f}"
        lines.append(
            f"{r.params:<10} {r.impl:<18} {r.step_ms:>10.3f} {r.best_ms:>9.3f} {r.steps:>4} "
            f"{r.params_per_s / 1e6:>9.1f} {r.gb_per_s:>6.2f} {ratio:>8} {r.first_step_s:>10.2f}"
        )
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="fewer sizes and steps")
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument(
        "--budget", type=float, default=None, help="seconds of timed steps per parameter set"
    )
    parser.add_argument("--out", type=Path, default=OUT)
    args = parser.parse_args(argv)

    device = torch.device(args.device)
    # All cores: torch's fused CPU step and our Inductor loops are OpenMP-parallel.
    threads = os.cpu_count() or 1
    torch.set_num_threads(threads)
    budget = args.budget or (3.0 if args.quick else 30.0)
    steps = (3, 20) if args.quick else (5, 400)
    warmup = 1 if args.quick else 3

    header = {
        "device": torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu",
        "cpu": platform.processor() or platform.machine(),
        "threads": threads,
        "torch": torch.__version__,
        "budget_s_per_param_set": budget,
        "steps_min_max": steps,
        "warmup": warmup,
        "statistic": "median step time (best also shown); ratio = median / torch's median",
        "bytes_per_param": {k: 12 + 4 * v for k, v in STATE_BYTES.items()},
    }
    if device.type == "cuda":
        header["copy_gb_per_s"] = round(copy_bandwidth(device), 1)

    rows: list[Row] = []
    start = time.perf_counter()
    for label, shapes in param_sets(device, args.quick).items():
        rows += rows_for(label, shapes, device, budget, steps, warmup)
        print(table([r for r in rows if r.params == label]), "\n", flush=True)
    header["wall_s"] = round(time.perf_counter() - start, 1)

    print(", ".join(f"{k}: {v}" for k, v in header.items()))
    print(table(rows))
    args.out.write_text(json.dumps({**header, "rows": [asdict(r) for r in rows]}, indent=2))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
