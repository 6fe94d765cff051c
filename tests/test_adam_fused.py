"""optim.Adam/AdamW(fused=True): the CPU path (torch.compile) and the CUDA path (Triton).

The fused paths compute the same algorithm in one pass over memory, so they agree with the
reference (torch.optim's for-loop Adam, which tests/test_adam.py pins ours to bit for bit)
up to rounding: assert_close's default tolerances for fp32/fp64, and for bf16/fp16 params
the 5e-3 that PyTorch's own tests allow its fused Adam.

The Triton kernel is checked here without a GPU, under Triton's CPU interpreter: Triton
reads TRITON_INTERPRET when a kernel is *defined* (at ``@triton.jit``), so the
`interpreted` fixture sets it and reloads `optim.triton_adam`, then restores both. The
interpreter never runs Triton's compiler, so one test also compiles the kernel for an H100
(sm_90) ahead of time, which needs no GPU. Tests that need a real GPU (trajectories on
CUDA, CUDA graphs, speed) skip without one.
"""

from __future__ import annotations

import copy
import importlib
import os
import subprocess
import sys

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import optim
from optim import functional, lowmem, triton_adam, triton_adam8

from .test_adam import KWARGS, PAIRS, STEPS, kwargs_id, lockstep, make_batches, make_mlp

LOW_PRECISION = {"atol": 5e-3, "rtol": 5e-3}
HAS_CUDA = torch.cuda.is_available()
needs_cuda = pytest.mark.skipif(not HAS_CUDA, reason="needs CUDA")
needs_triton = pytest.mark.skipif(not triton_adam.HAS_TRITON, reason="needs Triton")


def twins(name, dtype, device="cpu", ref_fused=False, **kwargs):
    """(model, our fused optimizer) and (copy, torch's optimizer: for-loop or fused)."""
    ours_cls, ref_cls = PAIRS[name]
    model = make_mlp(torch.float32, device=device).to(dtype)
    ref_model = copy.deepcopy(model)
    ref_kwargs = {"fused": True} if ref_fused else {"foreach": False}
    return (model, ours_cls(model.parameters(), fused=True, **kwargs)), (
        ref_model,
        ref_cls(ref_model.parameters(), **ref_kwargs, **kwargs),
    )


def assert_params_close(runs, **tolerances):
    (model, _), (ref_model, _) = runs
    for p, q in zip(model.parameters(), ref_model.parameters(), strict=True):
        assert_close(p, q, **tolerances)


def assert_state_close(opt, ref_opt, **tolerances):
    sd, ref_sd = opt.state_dict(), ref_opt.state_dict()
    for group, ref_group in zip(sd["param_groups"], ref_sd["param_groups"], strict=True):
        implementation = {"foreach": None, "fused": None}  # may differ on purpose
        assert {**group, **implementation} == {**ref_group, **implementation}
    for i, state in sd["state"].items():
        assert state.keys() == ref_sd["state"][i].keys()
        for key, value in state.items():
            expected = ref_sd["state"][i][key]
            if key == "step":
                assert value.item() == expected.item()
            else:
                assert_close(value, expected, **tolerances)


# ---------------------------------------------------------------- CPU fused (torch.compile)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("kwargs", KWARGS, ids=kwargs_id)
@pytest.mark.parametrize("name", PAIRS)
def test_cpu_fused_trajectory_matches_torch_for_loop(name, kwargs, dtype):
    ours, ref = twins(name, dtype, **kwargs)
    for _ in lockstep([ours, ref], make_batches(dtype=dtype)):
        assert_params_close([ours, ref])
        assert_state_close(ours[1], ref[1])


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "f16"])
@pytest.mark.parametrize("name", PAIRS)
def test_cpu_fused_low_precision_params_match_torch_fused(name, dtype):
    # Low-precision params: math in fp32, storage rounded, as torch's fused Adam does.
    kwargs = {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}
    ours, ref = twins(name, dtype, ref_fused=True, **kwargs)
    for _ in lockstep([ours, ref], make_batches(dtype=dtype)):
        assert_params_close([ours, ref], **LOW_PRECISION)
    assert_state_close(ours[1], ref[1], **LOW_PRECISION)
    assert ours[1].state[next(ours[0].parameters())]["exp_avg"].dtype == dtype


def test_cpu_fused_state_layout_and_state_dict_interchange_with_torch_fused():
    ours, ref = twins("adam", torch.float32, ref_fused=True, amsgrad=True)
    batches = make_batches()
    for _ in lockstep([ours, ref], batches[:10]):
        pass
    assert ours[1].defaults == ref[1].defaults
    for p, q in zip(ours[0].parameters(), ref[0].parameters(), strict=True):
        state, ref_state = ours[1].state[p], ref[1].state[q]
        assert list(state) == list(ref_state)
        for key in state:
            layout = (state[key].dtype, state[key].device, state[key].shape)
            assert layout == (ref_state[key].dtype, ref_state[key].device, ref_state[key].shape)
    # Swap state_dicts mid-run: each continues from the other's state.
    ours_sd, ref_sd = copy.deepcopy(ours[1].state_dict()), copy.deepcopy(ref[1].state_dict())
    ours[1].load_state_dict(ref_sd)
    ref[1].load_state_dict(ours_sd)
    for _ in lockstep([ours, ref], batches[10:]):
        assert_params_close([ours, ref])


def test_cpu_fused_changing_lr_and_betas_does_not_recompile():
    from torch._dynamo.utils import counters

    model = make_mlp()
    opt = optim.AdamW(model.parameters(), fused=True)
    scheduler = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=0.05, total_steps=STEPS)
    batches = make_batches()
    for _ in lockstep([(model, opt)], batches[:2]):
        scheduler.step()
    graphs = counters["stats"]["unique_graphs"]
    seen = set()
    for _ in lockstep([(model, opt)], batches[2:]):
        scheduler.step()
        seen.add((opt.param_groups[0]["lr"], opt.param_groups[0]["betas"]))
    assert len(seen) > STEPS // 2  # the hyperparameters kept changing...
    assert counters["stats"]["unique_graphs"] == graphs  # ...and none compiled anew


def test_cpu_fused_handles_groups_missing_grads_complex_channels_last_and_0_dim():
    def build():
        torch.manual_seed(0)
        conv = nn.Conv2d(3, 4, 3).to(memory_format=torch.channels_last)
        z = nn.Parameter(torch.randn(3, 2, dtype=torch.complex64))
        s = nn.Parameter(torch.tensor(0.5, dtype=torch.float64))
        return [conv.weight, conv.bias, z, s]

    def groups(ps):
        return [
            {"params": ps[:2], "amsgrad": True, "lr": 0.02},
            {"params": ps[2:], "weight_decay": 0.1, "maximize": True},
        ]

    ps, qs = build(), build()
    ours = optim.Adam(groups(ps), fused=True)
    ref = torch.optim.Adam(groups(qs), foreach=False)
    g = torch.Generator().manual_seed(1)
    for t in range(STEPS):
        grads = [torch.randn(p.shape, dtype=p.dtype, generator=g) for p in ps]
        for params, opt in ((ps, ours), (qs, ref)):
            for p, grad in zip(params, grads, strict=True):
                p.grad = None if (t % 3 == 0 and p is params[1]) else grad.clone()
            if params[0].grad is not None:
                params[0].grad = params[0].grad.contiguous(memory_format=torch.channels_last)
            opt.step()
        for p, q in zip(ps, qs, strict=True):
            assert_close(p, q)
    assert ours.state[ps[1]]["step"].item() == STEPS - len(range(0, STEPS, 3))
    assert ours.state[ps[0]]["exp_avg"].is_contiguous(memory_format=torch.channels_last)


def test_cpu_fused_param_with_grad_of_other_layout_still_matches():
    # A grad whose strides differ from its param's cannot share a flat view: that tensor
    # takes the same math eagerly.
    p = nn.Parameter(torch.randn(5, 6))
    q = nn.Parameter(p.detach().clone())
    ours = optim.Adam([p], fused=True, lr=0.01)
    ref = torch.optim.Adam([q], foreach=False, lr=0.01)
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        grad = torch.randn(6, 5, generator=g)
        p.grad, q.grad = grad.t(), grad.t().contiguous()
        ours.step()
        ref.step()
    assert_close(p, q)


# ---------------------------------------------------------------- dispatch and arguments


def test_fused_none_keeps_unfused_paths_and_true_dispatches_by_device(monkeypatch):
    from optim import fused_cpu

    called = []
    monkeypatch.setattr(fused_cpu, "adam_fused_cpu", lambda *a, **k: called.append("cpu"))
    monkeypatch.setattr(functional, "adam_single_tensor", lambda *a, **k: called.append("one"))
    model = make_mlp()
    for fused in (None, False, True):
        opt = optim.Adam(model.parameters(), fused=fused)
        lockstep_once(model, opt)
    assert called == ["one", "one", "cpu"]


def lockstep_once(model, opt):
    for _ in lockstep([(model, opt)], make_batches(1)):
        pass


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"fused": True, "foreach": True}, "cannot be used together"),
        ({"foreach": True, "state_dtype": "bf16"}, "foreach=True supports state_dtype"),
        ({"state_dtype": "fp8"}, "state_dtype must be"),
    ],
)
def test_impossible_implementation_choices_raise(kwargs, message):
    with pytest.raises(ValueError, match=message):
        optim.Adam(make_mlp().parameters(), **kwargs)


def test_cpu_fused_with_bf16_state_matches_single_tensor_bf16_state():
    runs = []
    for fused in (True, None):
        model = make_mlp()
        runs.append((model, optim.Adam(model.parameters(), fused=fused, state_dtype="bf16")))
    for _ in lockstep(runs, make_batches()):
        assert_params_close(runs, **LOW_PRECISION)
    for _, opt in runs:
        assert all(s["exp_avg"].dtype == torch.bfloat16 for s in opt.state.values())


# ---------------------------------------------------------------- Triton kernel, interpreted


@pytest.fixture(scope="module")
def interpreted():
    """`optim.triton_adam` (and `optim.triton_adam8`, which imports its parts) re-imported
    with TRITON_INTERPRET=1: their kernels run on CPU tensors."""
    if not triton_adam.HAS_TRITON:
        pytest.skip("needs Triton")
    saved = os.environ.get("TRITON_INTERPRET")
    os.environ["TRITON_INTERPRET"] = "1"
    try:
        module = importlib.reload(triton_adam)
        importlib.reload(triton_adam8)
        yield module
    finally:
        if saved is None:
            del os.environ["TRITON_INTERPRET"]
        else:
            os.environ["TRITON_INTERPRET"] = saved
        importlib.reload(triton_adam)
        importlib.reload(triton_adam8)


# Sizes around the test's block (64) and chunk (128): partial blocks, several chunks per
# tensor, a 0-dim tensor.
SHAPES = [(300,), (17, 5), (128,), (), (3, 2, 11)]


def kernel_hyper(name: str, kwargs: dict) -> dict:
    """The functional-API arguments that optim.Adam/AdamW(**kwargs) would pass."""
    adamw = name == "adamw"
    return {
        "lr": kwargs.get("lr", 1e-3),
        "beta1": 0.9,
        "beta2": 0.999,
        "eps": 1e-8,
        "weight_decay": kwargs.get("weight_decay", 1e-2 if adamw else 0.0),
        "decoupled_weight_decay": adamw,
        "amsgrad": kwargs.get("amsgrad", False),
        "maximize": kwargs.get("maximize", False),
    }


def reference_step(params, grads, states, steps, hyper):
    """fp32 math on upcast copies, results rounded back into each tensor's storage dtype:
    the semantics the kernel implements, computed by the reference single-tensor path."""
    wide = [[t.float() for t in s] for s in states]
    ps = [p.float() for p in params]
    functional.adam_single_tensor(
        ps,
        [g.float() for g in grads],
        [s[0] for s in wide],
        [s[1] for s in wide],
        [s[2] for s in wide],
        steps,
        **hyper,
    )
    for p, wide_p in zip(params, ps, strict=True):
        p.copy_(wide_p)
    for stored, computed in zip(states, wide, strict=True):
        for t, w in zip(stored, computed, strict=True):
            t.copy_(w)


def run_kernel_against_reference(launch, device, dtype, state_dtype, hyper, steps=8):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).to(device, dtype) for s in SHAPES]
    ref_params = [p.clone() for p in params]

    def zeros():
        return [
            [torch.zeros(p.shape, dtype=state_dtype, device=device) for _ in range(3)]
            for p in params
        ]

    states, ref_states = zeros(), zeros()
    counters = [torch.zeros((), device=device) for _ in params]
    ref_counters = [torch.zeros(()) for _ in params]
    lr = hyper["lr"]
    for t in range(steps):
        grads = [torch.randn(s, generator=g).to(device, dtype) for s in SHAPES]
        if isinstance(lr, torch.Tensor):
            lr.fill_(0.01 * (1 + t % 3))  # a tensor lr is read at each launch
        launch(params, grads, *(list(x) for x in zip(*states, strict=True)), counters, **hyper)
        reference_step(ref_params, grads, ref_states, ref_counters, {**hyper, "lr": float(lr)})
    tolerances = {} if dtype == torch.float32 and state_dtype == torch.float32 else LOW_PRECISION
    for p, q in zip(params, ref_params, strict=True):
        assert_close(p.cpu(), q.cpu(), **tolerances)
    for s, r in zip(states, ref_states, strict=True):
        for a, b in zip(s if hyper["amsgrad"] else s[:2], r, strict=False):
            assert_close(a.cpu(), b.cpu(), **tolerances)
    assert all(c.item() == steps for c in counters)


@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"]
)
@pytest.mark.parametrize("kwargs", KWARGS, ids=kwargs_id)
@pytest.mark.parametrize("name", PAIRS)
def test_triton_kernel_matches_reference_interpreted(interpreted, name, kwargs, dtype):
    def launch(*args, **hyper):
        interpreted.adam_triton(*args, block=64, chunk=128, **hyper)

    run_kernel_against_reference(launch, "cpu", dtype, dtype, kernel_hyper(name, kwargs))


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16], ids=["f32", "bf16"])
def test_triton_kernel_tensor_lr_and_bf16_state_interpreted(interpreted, dtype):
    hyper = {**kernel_hyper("adamw", {"amsgrad": True}), "lr": torch.tensor(0.01)}

    def launch(*args, **hyper):
        interpreted.adam_triton(*args, block=64, chunk=128, **hyper)

    run_kernel_against_reference(launch, "cpu", dtype, torch.bfloat16, hyper)


def test_triton_kernel_default_block_and_chunk_interpreted(interpreted):
    # The production sizes: one full unmasked block and a masked tail.
    p = torch.randn(interpreted.CHUNK + interpreted.BLOCK + 5)
    q = p.clone()
    grad = torch.randn_like(p)
    state = [torch.zeros_like(p) for _ in range(3)]
    ref_state = [torch.zeros_like(p) for _ in range(3)]
    hyper = kernel_hyper("adam", {"weight_decay": 0.1})
    interpreted.adam_triton([p], [grad], *([s] for s in state), [torch.zeros(())], **hyper)
    reference_step([q], [grad], [ref_state], [torch.zeros(())], hyper)
    assert_close(p, q)


def test_triton_kernel_channels_last_param_and_grad_of_other_layout_interpreted(interpreted):
    p = torch.randn(2, 3, 4, 5).contiguous(memory_format=torch.channels_last)
    q = p.contiguous()
    state = [torch.zeros_like(p) for _ in range(3)]  # channels-last too, as Adam makes them
    ref_state = [torch.zeros_like(q) for _ in range(3)]
    hyper = kernel_hyper("adamw", {"amsgrad": True})
    steps, ref_steps = [torch.zeros(())], [torch.zeros(())]
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        grad = torch.randn(2, 3, 4, 5, generator=g)  # contiguous: unlike its param
        interpreted.adam_triton([p], [grad], *([s] for s in state), steps, **hyper)
        reference_step([q], [grad], [ref_state], ref_steps, hyper)
    assert p.is_contiguous(memory_format=torch.channels_last)
    assert_close(p, q)


def test_triton_rejects_unsupported_dtypes_and_host_steps(interpreted):
    hyper = kernel_hyper("adam", {})
    p = torch.randn(4, dtype=torch.float64)
    with pytest.raises(ValueError, match="float32, bfloat16 and float16"):
        interpreted.adam_triton([p], [p.clone()], [p * 0], [p * 0], [], [torch.zeros(())], **hyper)
    p = torch.randn(4)
    with pytest.raises(ValueError, match="float32 tensor on the param's device"):
        step = torch.zeros((), dtype=torch.float64)
        interpreted.adam_triton([p], [p.clone()], [p * 0], [p * 0], [], [step], **hyper)


# int8 state: a tensor with a partial last block over several programs, one kept in fp32
# (too small to quantise), and a channels-last conv weight (blocks in memory order).
INT8_SHAPES = [(4100,), (17,), (64, 8, 3, 3)]


def assert_close_but_for_flipped_codes(actual, expected, **tolerances):
    """assert_close for all but 1% of elements, and within 2e-3 for those.

    The kernel computes the bias corrections in fp32 on the device (for CUDA graphs), the
    eager path in Python doubles. A last-bit difference in a moment that sits on the
    midpoint between two codes rounds it to the other code: one code step, which moves
    that element's update by a fraction of lr."""
    assert_close(actual, expected, atol=2e-3, rtol=0)
    close = torch.isclose(actual.float(), expected.float(), **tolerances)
    assert close.float().mean().item() >= 0.99


def int8_params(dtype):
    g = torch.Generator().manual_seed(0)
    params = [torch.randn(s, generator=g).to(dtype) for s in INT8_SHAPES]
    params[2] = params[2].to(memory_format=torch.channels_last)
    return params


def int8_lists(states, amsgrad):
    names = lowmem.MOMENTS if amsgrad else lowmem.MOMENTS[:2]
    lists = [[lowmem.as_moment(s, n) for s in states] for n in names]
    return lists if amsgrad else [*lists, []]


@pytest.mark.parametrize(
    ("name", "kwargs", "dtype"),
    [("adam", k, torch.float32) for k in KWARGS]
    + [("adamw", {}, torch.float32), ("adamw", {"amsgrad": True}, torch.bfloat16)],
    ids=lambda v: kwargs_id(v) if isinstance(v, dict) else str(v).replace("torch.", ""),
)
def test_triton_int8_kernel_matches_eager_int8_interpreted(interpreted, name, kwargs, dtype):
    hyper = kernel_hyper(name, kwargs)
    if dtype == torch.float32:
        hyper["lr"] = torch.tensor(0.01)  # read in the kernel at each launch
    runs = []
    for _ in range(2):
        params = int8_params(dtype)
        states = [lowmem.init_moments(p, "int8", hyper["amsgrad"]) for p in params]
        runs.append((params, states, [torch.zeros(()) for _ in params]))
    g = torch.Generator().manual_seed(1)
    for t in range(4):
        grads = [torch.randn(s, generator=g).to(dtype) for s in INT8_SHAPES]
        if isinstance(hyper["lr"], torch.Tensor):
            hyper["lr"].fill_(0.01 * (1 + t % 3))
        (params, states, steps), (ref_params, ref_states, ref_steps) = runs
        triton_adam8.adam8_triton(params, grads, *int8_lists(states, hyper["amsgrad"]), steps,
                                  **hyper)  # fmt: skip
        lowmem.adam_low_memory(ref_params, grads, *int8_lists(ref_states, hyper["amsgrad"]),
                               ref_steps, **hyper)  # fmt: skip
    (params, states, steps), (ref_params, ref_states, _) = runs
    assert params[2].is_contiguous(memory_format=torch.channels_last)
    tolerances = {"atol": 1e-5, "rtol": 1.3e-6} if dtype == torch.float32 else LOW_PRECISION
    for p, q in zip(params, ref_params, strict=True):
        assert_close_but_for_flipped_codes(p, q, **tolerances)
    for state, ref_state in zip(states, ref_states, strict=True):
        assert state.keys() == ref_state.keys()
        for key, value in state.items():
            if value.dtype == torch.uint8:  # a value on a code boundary may round either way
                assert (value == ref_state[key]).float().mean().item() >= 0.99, key
            else:
                assert_close_but_for_flipped_codes(value, ref_state[key], **tolerances)
    assert [s.item() for s in steps] == [4.0] * len(INT8_SHAPES)


def test_triton_int8_rejects_codes_laid_out_unlike_the_param_before_any_update(interpreted):
    small, big = torch.randn(17), torch.randn(64, 8, 3, 3)
    states = [lowmem.init_moments(p, "int8", False) for p in (small, big)]  # contiguous codes
    big = big.to(memory_format=torch.channels_last)
    before, steps = small.clone(), [torch.zeros(()), torch.zeros(())]
    grads = [torch.randn(17), torch.randn(64, 8, 3, 3)]
    with pytest.raises(ValueError, match="share one dense layout"):
        triton_adam8.adam8_triton([small, big], grads, *int8_lists(states, False), steps,
                                  **kernel_hyper("adam", {}))  # fmt: skip
    assert torch.equal(small, before) and all(s.item() == 0 for s in steps)


def test_triton_int8_kernel_steps_optim_adams_own_state_interpreted(interpreted):
    # What optim.Adam(fused=True, state_dtype="int8") hands the kernel for CUDA params (its
    # gathered lists: Quantized moments, fp32 moments for small tensors, float32 steps),
    # stepped here on CPU through the interpreter against the eager int8 optimizer.
    model = nn.Sequential(nn.Linear(64, 96), nn.Tanh(), nn.Linear(96, 3))
    opt = optim.Adam(model.parameters(), lr=0.01, fused=True, state_dtype="int8")
    ref = copy.deepcopy(model)
    ref_opt = optim.Adam(ref.parameters(), lr=0.01, state_dtype="int8")
    g = torch.Generator().manual_seed(2)
    for _ in range(5):
        x, y = torch.randn(16, 64, generator=g), torch.randn(16, 3, generator=g)
        for m, o in ((model, opt), (ref, ref_opt)):
            o.zero_grad()
            nn.functional.mse_loss(m(x), y).backward()
        triton_adam8.adam8_triton(*opt._gather(opt.param_groups[0]), lr=0.01, beta1=0.9,
                                  beta2=0.999, eps=1e-8, weight_decay=0.0,
                                  decoupled_weight_decay=False, amsgrad=False,
                                  maximize=False)  # fmt: skip
        ref_opt.step()
    for p, q in zip(model.parameters(), ref.parameters(), strict=True):
        assert_close_but_for_flipped_codes(p, q, atol=1e-5, rtol=1.3e-6)
    assert opt.state[model[0].weight]["exp_avg"].dtype == torch.uint8
    assert opt.state[model[0].weight]["step"].item() == 5


AOT_COMPILE = """
import triton, triton.language as tl
from triton.backends.compiler import GPUTarget
from triton.compiler import ASTSource
from optim import triton_adam

names = ["tensors", "chunks", "lr_ptr", "lr", "beta1", "beta2", "eps", "weight_decay"]
types = ["*i64", "*i64", "*fp32", "fp32", "fp32", "fp32", "fp32", "fp32"]
constants = {
    "P_DTYPE": tl.bfloat16, "S_DTYPE": tl.float32, "LR_IS_TENSOR": True, "MAXIMIZE": True,
    "HAS_WEIGHT_DECAY": True, "DECOUPLED": True, "AMSGRAD": True, "ALIGNED": True,
    "CHUNK": triton_adam.CHUNK, "BLOCK": triton_adam.BLOCK,
}
signature = dict(zip(names, types)) | dict.fromkeys(constants, "constexpr")
order = list(signature)
source = ASTSource(
    fn=triton_adam._adam_kernel,
    signature=signature,
    constexprs={(order.index(k),): v for k, v in constants.items()},
)
kernel = triton.compile(source, target=GPUTarget("cuda", 90, 32))
assert kernel.asm["cubin"], "no cubin"
assert "ld.global.v4" in kernel.asm["ptx"], "loads not vectorised"

from optim import triton_adam8

names = ["tensors", "blocks", "signed_code", "signed_midpoints", "unsigned_code",
         "unsigned_midpoints", "lr_ptr", "lr", "beta1", "beta2", "eps", "weight_decay"]
types = ["*i64", "*i64", "*fp32", "*fp32", "*fp32", "*fp32", "*fp32", "fp32", "fp32", "fp32",
         "fp32", "fp32"]
constants = {
    "P_DTYPE": tl.bfloat16, "LR_IS_TENSOR": True, "MAXIMIZE": True, "HAS_WEIGHT_DECAY": True,
    "DECOUPLED": True, "AMSGRAD": True, "ROWS": triton_adam8.ROWS, "QBLOCK": 256,
}
signature = dict(zip(names, types)) | dict.fromkeys(constants, "constexpr")
order = list(signature)
source = ASTSource(
    fn=triton_adam8._adam8_kernel,
    signature=signature,
    constexprs={(order.index(k),): v for k, v in constants.items()},
)
assert triton.compile(source, target=GPUTarget("cuda", 90, 32)).asm["cubin"], "no int8 cubin"
"""


@needs_triton
@pytest.mark.skipif(HAS_CUDA, reason="covered by the CUDA tests")
def test_triton_kernels_compile_for_h100_without_a_gpu():
    # The interpreter runs the kernel's Python; this runs Triton's real compiler (to PTX and,
    # with the ptxas Triton ships, a cubin for sm_90), which the interpreter never does.
    env = {k: v for k, v in os.environ.items() if k != "TRITON_INTERPRET"}
    done = subprocess.run(
        [sys.executable, "-c", AOT_COMPILE], capture_output=True, text=True, timeout=300, env=env
    )
    if "ModuleNotFoundError" in done.stderr or "ImportError" in done.stderr:
        pytest.skip(f"this Triton cannot compile ahead of time: {done.stderr[-300:]}")
    assert done.returncode == 0, done.stderr


def test_optim_works_without_triton():
    # Blocking the import stands in for an installation without Triton.
    code = """
import sys
sys.modules["triton"] = None
import torch, optim
from optim import triton_adam
assert not triton_adam.HAS_TRITON
p = torch.nn.Parameter(torch.ones(3))
p.grad = torch.ones(3)
for fused in (None, True):
    optim.Adam([p], fused=fused).step()
try:
    triton_adam.adam_triton([p], [p.grad], [p * 0], [p * 0], [], [torch.zeros(())], lr=0.1,
        beta1=0.9, beta2=0.99, eps=1e-8, weight_decay=0.0, decoupled_weight_decay=False,
        amsgrad=False, maximize=False)
except RuntimeError as error:
    assert "needs Triton" in str(error)
else:
    raise AssertionError("adam_triton ran without Triton")
"""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stderr


# ---------------------------------------------------------------- CUDA (skipped without one)


@needs_cuda
@needs_triton
@pytest.mark.parametrize(
    "dtype", [torch.float32, torch.bfloat16, torch.float16], ids=["f32", "bf16", "f16"]
)
@pytest.mark.parametrize("kwargs", KWARGS, ids=kwargs_id)
@pytest.mark.parametrize("name", PAIRS)
def test_cuda_triton_kernel_matches_reference(name, kwargs, dtype):
    run_kernel_against_reference(
        triton_adam.adam_triton, "cuda", dtype, dtype, kernel_hyper(name, kwargs)
    )


@needs_cuda
@needs_triton
@pytest.mark.parametrize("kwargs", KWARGS, ids=kwargs_id)
@pytest.mark.parametrize("name", PAIRS)
def test_cuda_fused_trajectory_matches_torch_fused(name, kwargs):
    ours, ref = twins(name, torch.float32, device="cuda", ref_fused=True, **kwargs)
    for _ in lockstep([ours, ref], make_batches(device="cuda")):
        assert_params_close([ours, ref])
        assert_state_close(ours[1], ref[1])
    step = ours[1].state[next(ours[0].parameters())]["step"]
    assert step.device.type == "cuda" and step.dtype == torch.float32


@needs_cuda
@needs_triton
def test_cuda_graph_replay_matches_eager_steps_with_changing_lr():
    model = make_mlp(device="cuda")
    eager_model = copy.deepcopy(model)
    lr = torch.tensor(0.01, device="cuda")
    opt = optim.AdamW(model.parameters(), lr=lr, fused=True, amsgrad=True)
    eager = optim.AdamW(eager_model.parameters(), lr=0.01, fused=True, amsgrad=True)
    batches = make_batches(device="cuda")

    def set_grads(m, batch):
        m.zero_grad()
        nn.functional.mse_loss(m(batch[0]), batch[1]).backward()

    # Warm-up on a side stream creates the state and the kernel's tables.
    stream = torch.cuda.Stream()
    stream.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(stream):
        for m, o in ((model, opt), (eager_model, eager)):
            set_grads(m, batches[0])
            o.step()
    torch.cuda.current_stream().wait_stream(stream)
    static_grads = [p.grad for p in model.parameters()]
    graph = torch.cuda.CUDAGraph()
    with torch.cuda.graph(graph):
        opt.step()
    for t, batch in enumerate(batches[1:]):
        new_lr = 0.01 / (1 + t)
        lr.fill_(new_lr)
        eager.param_groups[0]["lr"] = new_lr
        set_grads(eager_model, batch)
        for static, p in zip(static_grads, eager_model.parameters(), strict=True):
            static.copy_(p.grad)
        graph.replay()
        eager.step()
        for p, q in zip(model.parameters(), eager_model.parameters(), strict=True):
            assert_close(p, q)
