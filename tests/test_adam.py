"""optim.Adam / optim.AdamW against torch.optim.Adam / AdamW, which are the specification.

Every comparison uses torch.testing.assert_close with its default tolerances (or exact
equality where the claim is "identical"): a difference from torch is a bug, not noise.
"""

from __future__ import annotations

import copy
import io
import math
from collections.abc import Callable, Iterator

import pytest
import torch
from torch import nn
from torch.testing import assert_close

import optim
from optim import functional

PAIRS = {
    "adam": (optim.Adam, torch.optim.Adam),
    "adamw": (optim.AdamW, torch.optim.AdamW),
}
KWARGS = [
    {},
    {"lr": 0.01},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "maximize": True},
    {"weight_decay": 0.1, "amsgrad": True},
]
STEPS = 20


def kwargs_id(kwargs: dict) -> str:
    return ",".join(f"{k}={v}" for k, v in kwargs.items()) or "defaults"


# ---------------------------------------------------------------- helpers


def make_mlp(dtype: torch.dtype = torch.float32, seed: int = 0, device: str = "cpu") -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(6, 8), nn.Tanh(), nn.Linear(8, 3)).to(device, dtype)


def make_batches(
    n: int = STEPS, dtype: torch.dtype = torch.float32, seed: int = 1, device: str = "cpu"
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    g = torch.Generator().manual_seed(seed)
    return [
        (
            torch.randn(5, 6, generator=g, dtype=dtype).to(device),
            torch.randn(5, 3, generator=g, dtype=dtype).to(device),
        )
        for _ in range(n)
    ]


def loss_fn(model: nn.Module, batch: tuple[torch.Tensor, torch.Tensor]) -> torch.Tensor:
    x, y = batch
    return nn.functional.mse_loss(model(x), y)


def backward(model: nn.Module, opt: torch.optim.Optimizer, batch) -> torch.Tensor:
    opt.zero_grad()
    loss = loss_fn(model, batch)
    loss.backward()
    return loss


def assert_same(model_a: nn.Module, opt_a, model_b: nn.Module, opt_b) -> None:
    """Parameters, every state tensor (all keys, incl. step) and every group setting agree."""
    for pa, pb in zip(model_a.parameters(), model_b.parameters(), strict=True):
        assert_close(pa, pb)
    assert_same_optimizer(opt_a, opt_b)


def assert_same_optimizer(opt_a, opt_b) -> None:
    sd_a, sd_b = opt_a.state_dict(), opt_b.state_dict()
    assert sd_a["state"].keys() == sd_b["state"].keys()
    for i, state_a in sd_a["state"].items():
        state_b = sd_b["state"][i]
        assert state_a.keys() == state_b.keys(), i
        for key in state_a:
            assert_close(state_a[key], state_b[key], msg=lambda m, i=i, key=key: f"{i}/{key}: {m}")
    assert sd_a["param_groups"] == sd_b["param_groups"]


def lockstep(
    runs: list[tuple[nn.Module, torch.optim.Optimizer]],
    batches,
    *,
    before_step: Callable[[int, nn.Module], None] | None = None,
) -> Iterator[int]:
    """Step every (model, optimizer) on the same batches; yield after each step to compare."""
    for t, batch in enumerate(batches):
        for model, opt in runs:
            backward(model, opt, batch)
            if before_step is not None:
                before_step(t, model)
            opt.step()
        yield t


def twins(ours_cls, ref_cls, dtype=torch.float64, device="cpu", **kwargs):
    """The same MLP twice: one driven by our optimizer, one by torch's, same settings."""
    model = make_mlp(dtype, device=device)
    ref_model = copy.deepcopy(model)
    return (model, ours_cls(model.parameters(), **kwargs)), (
        ref_model,
        ref_cls(ref_model.parameters(), **kwargs),
    )


# ---------------------------------------------------------------- parity with torch


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["f64", "f32"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kwargs", KWARGS, ids=kwargs_id)
@pytest.mark.parametrize("name", PAIRS)
def test_trajectory_matches_torch(name, kwargs, foreach, dtype):
    ours, ref = twins(*PAIRS[name], dtype=dtype, foreach=foreach, **kwargs)
    for _ in lockstep([ours, ref], make_batches(dtype=dtype)):
        assert_same(*ours, *ref)
    assert ours[1].state_dict()["state"][0]["step"].item() == STEPS


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kwargs", KWARGS, ids=kwargs_id)
@pytest.mark.parametrize("name", PAIRS)
def test_trajectory_is_bitwise_identical_to_torch_on_cpu(name, kwargs, foreach):
    # Same operations in the same order: not merely close, equal. A large lr makes a
    # reordering of the denominator's arithmetic visible in the parameters' last bits.
    kwargs = {**kwargs, "lr": 10 * kwargs.get("lr", 1e-3), "foreach": foreach}
    ours, ref = twins(*PAIRS[name], dtype=torch.float32, **kwargs)
    for _ in lockstep([ours, ref], make_batches()):
        pass
    for pa, pb in zip(ours[0].parameters(), ref[0].parameters(), strict=True):
        assert torch.equal(pa, pb)
    sd_ours, sd_ref = ours[1].state_dict()["state"], ref[1].state_dict()["state"]
    for i, state in sd_ours.items():
        for key, value in state.items():
            assert torch.equal(value, sd_ref[i][key]), (i, key)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_param_groups_with_different_hyperparameters_match_torch(foreach):
    def groups(model):
        return [
            {"params": model[0].parameters(), "lr": 0.02, "betas": (0.8, 0.99), "amsgrad": True},
            {"params": model[2].weight, "weight_decay": 0.3, "maximize": True, "eps": 1e-6},
            {"params": [model[2].bias]},
        ]

    for ours_cls, ref_cls in PAIRS.values():
        model = make_mlp(torch.float64)
        ref_model = copy.deepcopy(model)
        ours = (model, ours_cls(groups(model), lr=1e-3, foreach=foreach))
        ref = (ref_model, ref_cls(groups(ref_model), lr=1e-3, foreach=foreach))
        for _ in lockstep([ours, ref], make_batches(dtype=torch.float64)):
            assert_same(*ours, *ref)
        assert "max_exp_avg_sq" in ours[1].state[model[0].weight]
        assert "max_exp_avg_sq" not in ours[1].state[model[2].weight]


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_param_without_grad_on_some_steps_is_skipped_like_torch(foreach):
    def drop_bias_grad(t, model):
        if t % 3 == 0:
            model[2].bias.grad = None

    ours, ref = twins(optim.Adam, torch.optim.Adam, foreach=foreach, weight_decay=0.1)
    batches = make_batches(dtype=torch.float64)
    for _ in lockstep([ours, ref], batches, before_step=drop_bias_grad):
        assert_same(*ours, *ref)
    skipped = len(range(0, STEPS, 3))
    assert ours[1].state[ours[0][2].bias]["step"].item() == STEPS - skipped
    assert ours[1].state[ours[0][2].weight]["step"].item() == STEPS


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_frozen_then_unfrozen_layer_matches_torch(foreach):
    ours, ref = twins(optim.AdamW, torch.optim.AdamW, foreach=foreach)
    batches = make_batches(dtype=torch.float64)
    for model, _ in (ours, ref):
        model[0].requires_grad_(False)
    first_layer = list(ours[0][0].parameters())
    for t in lockstep([ours, ref], batches):
        if t == 7:
            assert all(p not in ours[1].state for p in first_layer)
            for model, _ in (ours, ref):
                model[0].requires_grad_(True)
        assert_same(*ours, *ref)
    assert ours[1].state[first_layer[0]]["step"].item() == STEPS - 8


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_zero_dim_parameter_matches_torch(foreach):
    p = nn.Parameter(torch.tensor(1.5, dtype=torch.float64))
    q = nn.Parameter(p.detach().clone())
    ours = optim.Adam([p], lr=0.1, weight_decay=0.1, amsgrad=True, foreach=foreach)
    ref = torch.optim.Adam([q], lr=0.1, weight_decay=0.1, amsgrad=True, foreach=foreach)
    for t in range(STEPS):
        for param, opt in ((p, ours), (q, ref)):
            opt.zero_grad()
            ((param - math.sin(t)) ** 2).backward()
            opt.step()
        assert_close(p, q)
        assert_same_optimizer(ours, ref)
    assert ours.state[p]["exp_avg"].dim() == 0


COMPLEX_KWARGS = [
    {},
    {"weight_decay": 0.1},
    {"weight_decay": 0.1, "decoupled_weight_decay": True},
    {"weight_decay": 0.1, "maximize": True},
    {"weight_decay": 0.1, "amsgrad": True},
]


@pytest.mark.parametrize("dtype", [torch.complex128, torch.complex64], ids=["c128", "c64"])
@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("kwargs", COMPLEX_KWARGS, ids=kwargs_id)
def test_complex_param_equals_its_real_view_twin_and_torch(kwargs, foreach, dtype):
    g = torch.Generator().manual_seed(0)
    z = nn.Parameter(torch.randn(4, 3, dtype=dtype, generator=g))
    twin = nn.Parameter(torch.view_as_real(z.detach()).clone())
    z_ref = nn.Parameter(z.detach().clone())
    ours = optim.Adam([z], lr=0.01, foreach=foreach, **kwargs)
    ours_real = optim.Adam([twin], lr=0.01, foreach=foreach, **kwargs)
    ref = torch.optim.Adam([z_ref], lr=0.01, foreach=foreach, **kwargs)
    for _ in range(STEPS):
        grad = torch.randn(4, 3, dtype=dtype, generator=g)
        z.grad, z_ref.grad, twin.grad = grad.clone(), grad.clone(), torch.view_as_real(grad).clone()
        for opt in (ours, ours_real, ref):
            opt.step()
        assert_close(torch.view_as_real(z), twin)
        assert_close(z, z_ref)
        assert_same_optimizer(ours, ref)
        for key, value in ours.state[z].items():
            expected = ours_real.state[twin][key]
            assert_close(value if key == "step" else torch.view_as_real(value), expected)


TENSOR_CASES = {  # which hyperparameters are tensors, of which dtype
    "lr f32": lambda: {"lr": torch.tensor(0.01)},
    "lr f64": lambda: {"lr": torch.tensor(0.01, dtype=torch.float64)},
    "lr 1-element": lambda: {"lr": torch.tensor([0.01])},
    "betas f32": lambda: {"betas": (torch.tensor(0.8), torch.tensor(0.9))},
    "betas f64": lambda: {"betas": (torch.tensor(0.8, dtype=torch.float64),
                                    torch.tensor(0.9, dtype=torch.float64))},
    "lr+betas mixed": lambda: {"lr": torch.tensor(0.01),
                               "betas": (torch.tensor(0.8, dtype=torch.float64),
                                         torch.tensor(0.9))},
}


@pytest.mark.parametrize("param_dtype", [torch.float64, torch.float32], ids=["p64", "p32"])
@pytest.mark.parametrize("case", TENSOR_CASES)
@pytest.mark.parametrize("name", PAIRS)
@pytest.mark.parametrize("foreach", [False, None], ids=["single", "default"])
def test_tensor_hyperparameters_give_torchs_exact_results(foreach, name, case, param_dtype):
    # torch keeps a tensor lr or beta a tensor: `1 - lr * weight_decay`, the bias corrections
    # and the step size are computed in its dtype (a float32 lr on float64 params differs
    # from the float lr by ~5e-7 relative after 30 steps). Ours must give the same bits.
    ours_cls, torch_cls = PAIRS[name]
    kwargs = {"weight_decay": 0.1, "amsgrad": True, "foreach": foreach}
    runs = []
    for cls in (ours_cls, torch_cls):
        model = make_mlp(param_dtype)
        runs.append((model, cls(model.parameters(), **kwargs, **TENSOR_CASES[case]())))
    for _ in lockstep(runs, make_batches(n=30, dtype=param_dtype)):
        pass
    (ours_model, ours), (ref_model, ref) = runs
    for p, q in zip(ours_model.parameters(), ref_model.parameters(), strict=True):
        assert_close(p, q, rtol=0, atol=0)
    assert_same_optimizer(ours, ref)


@pytest.mark.parametrize("case", TENSOR_CASES)
@pytest.mark.parametrize("name", PAIRS)
def test_tensor_hyperparameters_on_the_foreach_path_are_refused_as_torch_does(name, case):
    # torch's multi-tensor path takes tensor lr and betas only when capturable (CUDA); so
    # does ours, with torch's message.
    ours_cls, torch_cls = PAIRS[name]
    hyper = TENSOR_CASES[case]()
    with pytest.raises(ValueError) as torch_error:
        torch_cls(make_mlp().parameters(), foreach=True, **hyper)
    with pytest.raises(ValueError) as ours_error:
        ours_cls(make_mlp().parameters(), foreach=True, **hyper)
    assert str(ours_error.value) == str(torch_error.value)


def test_tensor_and_float_hyperparameters_still_agree_on_the_multi_tensor_math():
    # Floats stay doubles on every path: the foreach path matches torch's foreach bitwise.
    runs = []
    for cls in (optim.AdamW, torch.optim.AdamW):
        model = make_mlp(torch.float64)
        runs.append((model, cls(model.parameters(), lr=0.01, betas=(0.8, 0.9),
                                foreach=True, weight_decay=0.1)))
    for _ in lockstep(runs, make_batches(dtype=torch.float64)):
        pass
    for p, q in zip(runs[0][0].parameters(), runs[1][0].parameters(), strict=True):
        assert_close(p, q, rtol=0, atol=0)


@pytest.mark.parametrize("name", PAIRS)
def test_foreach_and_single_tensor_paths_agree(name):
    ours_cls = PAIRS[name][0]
    kwargs = {"weight_decay": 0.1, "amsgrad": True, "maximize": True}

    def build():
        # Mixed dtypes and a complex param in one group exercise the foreach grouping.
        model = make_mlp(torch.float64)
        model[2].to(torch.float32)
        extra = nn.Parameter(torch.linspace(-1, 1, 6, dtype=torch.complex64).reshape(2, 3))
        return model, extra

    (m_s, x_s), (m_f, x_f) = build(), build()
    single = ours_cls([*m_s.parameters(), x_s], foreach=False, **kwargs)
    multi = ours_cls([*m_f.parameters(), x_f], foreach=True, **kwargs)
    g = torch.Generator().manual_seed(3)
    for _ in range(STEPS):
        grads = [
            torch.randn(p.shape, dtype=p.dtype, generator=g)
            for p in single.param_groups[0]["params"]
        ]
        for opt in (single, multi):
            for p, grad in zip(opt.param_groups[0]["params"], grads, strict=True):
                p.grad = grad.clone()
            opt.step()
        for a, b in zip(
            single.param_groups[0]["params"], multi.param_groups[0]["params"], strict=True
        ):
            assert_close(a, b)
        sd_s, sd_f = single.state_dict(), multi.state_dict()
        sd_f["param_groups"][0]["foreach"] = False
        assert sd_s["param_groups"] == sd_f["param_groups"]
        for i, state in sd_s["state"].items():
            for key in state:
                assert_close(state[key], sd_f["state"][i][key])


def test_foreach_none_uses_single_tensor_path_on_cpu(monkeypatch):
    called = []
    monkeypatch.setattr(functional, "adam_foreach", lambda *a, **k: called.append("foreach"))
    monkeypatch.setattr(functional, "adam_single_tensor", lambda *a, **k: called.append("single"))
    model = make_mlp()
    opt = optim.Adam(model.parameters())
    backward(model, opt, make_batches(1)[0])
    opt.step()
    assert called == ["single"]
    assert functional.default_foreach(list(model.parameters())) is False


# ---------------------------------------------------------------- state_dict


def test_defaults_and_state_layout_match_torch():
    for ours_cls, ref_cls in PAIRS.values():
        ours, ref = twins(ours_cls, ref_cls, dtype=torch.float32, amsgrad=True)
        assert ours[1].defaults == ref[1].defaults
        for _ in lockstep([ours, ref], make_batches(2)):
            pass
        for p, q in zip(ours[0].parameters(), ref[0].parameters(), strict=True):
            state, ref_state = ours[1].state[p], ref[1].state[q]
            assert list(state) == list(ref_state)
            for key in state:
                assert layout(state[key]) == layout(ref_state[key]), key


def layout(t: torch.Tensor) -> tuple:
    return t.dtype, t.device, t.shape, t.stride()


def _continue_identically(make_first, make_second, *, via_bytes=False):
    """Train `first` 10 steps, load its state_dict into a fresh `second`, train both 10 more."""
    batches = make_batches(dtype=torch.float64)
    model = make_mlp(torch.float64)
    first = make_first(model.parameters())
    for _ in lockstep([(model, first)], batches[:10]):
        pass
    state_dict = first.state_dict()
    if via_bytes:
        buffer = io.BytesIO()
        torch.save(state_dict, buffer)
        buffer.seek(0)
        state_dict = torch.load(buffer, weights_only=True)
    else:
        state_dict = copy.deepcopy(state_dict)
    model_2 = copy.deepcopy(model)
    second = make_second(model_2.parameters())
    second.load_state_dict(state_dict)
    for _ in lockstep([(model, first), (model_2, second)], batches[10:]):
        for a, b in zip(model.parameters(), model_2.parameters(), strict=True):
            assert_close(a, b)
    return first, second


KW = {"lr": 0.01, "weight_decay": 0.1, "amsgrad": True}


@pytest.mark.parametrize("name", PAIRS)
def test_state_dict_round_trip_continues_identically(name):
    cls = PAIRS[name][0]
    first, second = _continue_identically(lambda p: cls(p, **KW), lambda p: cls(p))
    assert_same_optimizer(first, second)


@pytest.mark.parametrize("name", PAIRS)
def test_torch_state_dict_loads_into_ours_and_continues_identically(name):
    ours_cls, ref_cls = PAIRS[name]
    first, second = _continue_identically(lambda p: ref_cls(p, **KW), lambda p: ours_cls(p))
    assert_same_optimizer(first, second)


@pytest.mark.parametrize("name", PAIRS)
def test_our_state_dict_loads_into_torch_and_continues_identically(name):
    ours_cls, ref_cls = PAIRS[name]
    first, second = _continue_identically(lambda p: ours_cls(p, **KW), lambda p: ref_cls(p))
    assert_same_optimizer(first, second)


def test_state_dict_survives_torch_save_and_weights_only_load():
    first, second = _continue_identically(
        lambda p: optim.Adam(p, **KW), lambda p: optim.Adam(p), via_bytes=True
    )
    assert_same_optimizer(first, second)


def test_old_state_dict_gets_default_keys_and_tensor_step():
    model = make_mlp()
    opt = optim.Adam(model.parameters())
    backward(model, opt, make_batches(1)[0])
    opt.step()
    state_dict = copy.deepcopy(opt.state_dict())
    state_dict["state"][0]["step"] = 1.0  # before torch 1.12, step was a plain number
    for key in ("amsgrad", "maximize", "foreach", "capturable", "differentiable", "fused"):
        del state_dict["param_groups"][0][key]
    del state_dict["param_groups"][0]["decoupled_weight_decay"]
    opt.load_state_dict(state_dict)
    assert opt.param_groups[0]["amsgrad"] is False
    assert opt.param_groups[0]["decoupled_weight_decay"] is False
    step = opt.state[next(model.parameters())]["step"]
    assert torch.is_tensor(step) and layout(step) == (torch.float32, torch.device("cpu"), (), ())
    adamw = optim.AdamW(model.parameters())
    adamw.load_state_dict(state_dict)
    assert adamw.param_groups[0]["decoupled_weight_decay"] is True


# ---------------------------------------------------------------- training utilities


@pytest.mark.parametrize("name", PAIRS)
def test_one_cycle_lr_with_cycled_beta1_matches_torch(name):
    ours, ref = twins(*PAIRS[name], dtype=torch.float64)
    schedulers = [
        torch.optim.lr_scheduler.OneCycleLR(
            opt, max_lr=0.05, total_steps=STEPS, cycle_momentum=True
        )
        for _, opt in (ours, ref)
    ]
    beta1_seen = [ours[1].param_groups[0]["betas"][0]]
    for _ in lockstep([ours, ref], make_batches(dtype=torch.float64)):
        for scheduler in schedulers:
            scheduler.step()
        beta1_seen.append(ours[1].param_groups[0]["betas"][0])
        assert_same(*ours, *ref)  # includes the groups' lr and betas
    assert len(set(beta1_seen)) > STEPS // 2, beta1_seen  # beta1 really cycled


@pytest.mark.parametrize("name", PAIRS)
def test_grad_scaler_matches_torch_including_skipped_steps(name):
    ours, ref = twins(*PAIRS[name], dtype=torch.float32, weight_decay=0.1)
    scalers = [torch.amp.GradScaler("cpu", init_scale=2.0**12) for _ in range(2)]
    batches = make_batches()
    batches[5] = (batches[5][0] * math.inf, batches[5][1])  # an overflowing step to skip
    for t, batch in enumerate(batches):
        for (model, opt), scaler in zip((ours, ref), scalers, strict=True):
            opt.zero_grad()
            scaler.scale(loss_fn(model, batch)).backward()
            scaler.step(opt)
            scaler.update()
        assert_same(*ours, *ref)
        assert scalers[0].get_scale() == scalers[1].get_scale()
        if t == 5:
            assert ours[1].state_dict()["state"][0]["step"].item() == 5
    assert ours[1].state_dict()["state"][0]["step"].item() == STEPS - 1


def test_clip_grad_norm_matches_torch():
    ours, ref = twins(optim.Adam, torch.optim.Adam, lr=0.01)

    def clip(_t, model):
        nn.utils.clip_grad_norm_(model.parameters(), max_norm=0.05)

    for _ in lockstep([ours, ref], make_batches(dtype=torch.float64), before_step=clip):
        assert_same(*ours, *ref)


def test_step_with_closure_returns_loss_and_computes_grads():
    model = make_mlp()
    opt = optim.Adam(model.parameters())
    batch = make_batches(1)[0]

    def closure():
        opt.zero_grad()
        loss = loss_fn(model, batch)
        loss.backward()
        return loss

    before = [p.detach().clone() for p in model.parameters()]
    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and loss.requires_grad
    assert all(not torch.equal(b, p) for b, p in zip(before, model.parameters(), strict=True))


# ---------------------------------------------------------------- bad input


@pytest.mark.parametrize(
    ("kwargs", "name", "shown"),
    [
        ({"lr": -1.0}, "lr", "-1.0"),
        ({"lr": math.nan}, "lr", "nan"),
        ({"lr": math.inf}, "lr", "inf"),
        ({"lr": torch.tensor(-0.5)}, "lr", "-0.5"),
        ({"betas": (1.0, 0.999)}, "betas[0]", "1.0"),
        ({"betas": (-0.1, 0.999)}, "betas[0]", "-0.1"),
        ({"betas": (0.9, 1.0)}, "betas[1]", "1.0"),
        ({"betas": (0.9, -0.5)}, "betas[1]", "-0.5"),
        ({"betas": (0.9, math.nan)}, "betas[1]", "nan"),
        ({"eps": -1e-8}, "eps", "-1e-08"),
        ({"weight_decay": -0.1}, "weight_decay", "-0.1"),
    ],
    ids=lambda v: v if isinstance(v, str) else None,
)
@pytest.mark.parametrize("cls", [optim.Adam, optim.AdamW], ids=["adam", "adamw"])
def test_invalid_hyperparameter_raises_naming_argument_and_value(cls, kwargs, name, shown):
    with pytest.raises(ValueError) as excinfo:
        cls(make_mlp().parameters(), **kwargs)
    message = str(excinfo.value)
    assert name in message and shown in message, message


def test_tensor_lr_of_several_elements_raises():
    with pytest.raises(ValueError, match=r"lr must be a float or a 1-element tensor"):
        optim.Adam(make_mlp().parameters(), lr=torch.tensor([0.01, 0.02]))
    with pytest.raises(ValueError, match="betas must be either both floats or both Tensors"):
        optim.Adam(make_mlp().parameters(), betas=(torch.tensor(0.9), 0.999))


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
def test_sparse_gradient_raises_before_updating_anything(foreach):
    embedding = nn.Embedding(10, 4, sparse=True)
    dense = nn.Linear(4, 1)
    opt = optim.Adam(
        [{"params": dense.parameters()}, {"params": embedding.parameters()}], foreach=foreach
    )
    dense(embedding(torch.tensor([1, 2]))).sum().backward()
    before = [p.detach().clone() for p in dense.parameters()]
    with pytest.raises(RuntimeError, match="Adam does not support sparse gradients.*SparseAdam"):
        opt.step()
    for b, p in zip(before, dense.parameters(), strict=True):
        assert torch.equal(b, p)
    assert not opt.state


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("decoupled", [False, True], ids=["l2", "decoupled"])
def test_step_never_modifies_grad(decoupled, foreach):
    model = make_mlp()
    opt = optim.Adam(
        model.parameters(),
        weight_decay=0.1,
        decoupled_weight_decay=decoupled,
        maximize=True,
        amsgrad=True,
        foreach=foreach,
    )
    backward(model, opt, make_batches(1)[0])
    grads = [p.grad.clone() for p in model.parameters()]
    for _ in range(3):
        opt.step()
    for g, p in zip(grads, model.parameters(), strict=True):
        assert torch.equal(g, p.grad)


@pytest.mark.parametrize("foreach", [False, True], ids=["single", "foreach"])
@pytest.mark.parametrize("amsgrad", [False, True], ids=["adam", "amsgrad"])
def test_zero_grad_without_weight_decay_leaves_params_unchanged(amsgrad, foreach):
    model = make_mlp()
    opt = optim.Adam(model.parameters(), lr=0.1, amsgrad=amsgrad, foreach=foreach)
    before = [p.detach().clone() for p in model.parameters()]
    for p in model.parameters():
        p.grad = torch.zeros_like(p)
    for _ in range(5):
        opt.step()
    for b, p in zip(before, model.parameters(), strict=True):
        assert torch.equal(b, p)


# ---------------------------------------------------------------- CUDA (skipped without one)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
@pytest.mark.parametrize("foreach", [None, False, True], ids=["auto", "single", "foreach"])
@pytest.mark.parametrize("name", PAIRS)
def test_cuda_trajectory_matches_torch(name, foreach):
    kwargs = {"weight_decay": 0.1, "amsgrad": True, "maximize": True, "foreach": foreach}
    ours, ref = twins(*PAIRS[name], dtype=torch.float32, device="cuda", **kwargs)
    assert functional.default_foreach(list(ours[0].parameters())) is True
    for _ in lockstep([ours, ref], make_batches(device="cuda")):
        assert_same(*ours, *ref)
    for p in ours[0].parameters():
        state = ours[1].state[p]
        assert state["step"].device.type == "cpu"  # like torch without capturable/fused
        assert state["exp_avg"].device == p.device
