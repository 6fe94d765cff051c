"""PBT's exploit on the optimizer (search/trial/retune.py): the donor's Adam state loaded,
the explored hyperparameters applied, nothing reset, and the next step torch's."""

from __future__ import annotations

import copy

import pytest
import torch
from torch import nn
from torch.testing import assert_close

from optim import lowmem
from search.config import OptimizerConfig, TrainConfig, TrialConfig
from search.trial.retune import hyperparameters, retune
from search.trial.trainer import build_optimizer, build_schedule

DONOR = dict(lr=3e-3, beta1=0.9, beta2=0.999, eps=1e-8, weight_decay=0.0)
EXPLORED = dict(lr=1.2e-3, beta1=0.8, beta2=0.99, eps=1e-6, weight_decay=1e-4)
STEPS = 40  # the schedule's length: the donor stops at step 7, mid-schedule


def config(schedule: str = "cosine", **optimizer) -> TrialConfig:
    return TrialConfig(optimizer=OptimizerConfig(**optimizer),
                       train=TrainConfig(epochs=4, schedule=schedule, device="cpu"))


def net() -> nn.Module:
    torch.manual_seed(0)  # 8192 weights: quantised under state_dtype int8
    return nn.Sequential(nn.Linear(128, 64), nn.Tanh(), nn.Linear(64, 1))


def grads(model: nn.Module, seed: int) -> None:
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(32, 128, generator=g)
    model.zero_grad(set_to_none=True)
    model(x).pow(2).mean().backward()


def donor(cfg: TrialConfig) -> dict:
    """A donor trained 7 steps: its weights, optimizer and schedule state."""
    model = net()
    opt = build_optimizer(cfg, model.parameters())
    schedule = build_schedule(cfg, opt, STEPS // cfg.train.epochs)
    for step in range(7):
        grads(model, step)
        opt.step()
        schedule.step()
    return copy.deepcopy({"model": model.state_dict(), "optimizer": opt.state_dict(),
                          "scheduler": schedule.state_dict(), "lr": opt.param_groups[0]["lr"]})


def exploit(saved: dict, cfg: TrialConfig):
    """What a member does at an exploit: build from its explored config, load the donor's
    checkpoint, retune. (A copy: the loaded state tensors are the checkpoint's own.)"""
    saved = copy.deepcopy(saved)
    model = net()
    model.load_state_dict(saved["model"])
    opt = build_optimizer(cfg, model.parameters())
    schedule = build_schedule(cfg, opt, STEPS // cfg.train.epochs)
    opt.load_state_dict(saved["optimizer"])
    schedule.load_state_dict(saved["scheduler"])
    retune(opt, schedule, cfg.optimizer)
    return model, opt, schedule


def states_equal(a: dict, b: dict) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert a[key].keys() == b[key].keys()
        for name, tensor in a[key].items():
            assert tensor.dtype == b[key][name].dtype, name
            assert torch.equal(tensor, b[key][name]), name


@pytest.mark.parametrize("state_dtype", ["fp32", "int8"])
@pytest.mark.parametrize("schedule", ["constant", "cosine", "onecycle"])
def test_an_exploit_keeps_the_donors_state_and_takes_the_explored_values(schedule, state_dtype):
    saved = donor(config(schedule, state_dtype=state_dtype, **DONOR))
    _, opt, sched = exploit(saved, config(schedule, state_dtype=state_dtype, **EXPLORED))

    states_equal(opt.state_dict()["state"], saved["optimizer"]["state"])
    if state_dtype == "int8":  # codes and scales, carried as they are
        assert any(k.endswith("_absmax") for s in opt.state.values() for k in s)
    assert hyperparameters(opt) == pytest.approx(EXPLORED, rel=1e-12)
    # The schedule's position is the donor's; its factor now applies to the new rate.
    assert sched.last_epoch == 7
    factor = saved["lr"] / DONOR["lr"]
    assert opt.param_groups[0]["lr"] == pytest.approx(EXPLORED["lr"] * factor, rel=1e-12)
    if schedule != "constant":
        assert factor != pytest.approx(1.0)  # mid-schedule: the factor is really carried
    # The schedule carries on from there: its next rates are the donor's times the ratio.
    ref_opt = build_optimizer(config(schedule, **DONOR), net().parameters())
    ref = build_schedule(config(schedule, **DONOR), ref_opt, STEPS // 4)
    ref_opt.load_state_dict(saved["optimizer"])
    ref.load_state_dict(saved["scheduler"])
    for _ in range(5):
        ref_opt.step()
        ref.step()
        sched.step()
        assert opt.param_groups[0]["lr"] == pytest.approx(
            ref_opt.param_groups[0]["lr"] * EXPLORED["lr"] / DONOR["lr"], rel=1e-9)


def test_a_plain_resume_changes_nothing():
    saved = donor(config("onecycle", **DONOR))
    _, opt, _ = exploit(saved, config("onecycle", **DONOR))
    assert opt.state_dict()["param_groups"] == saved["optimizer"]["param_groups"]


def torch_step(saved: dict, lr: float, moments=None) -> nn.Module:
    """torch.optim.Adam loaded with the donor's state (or these fp32 moments), the
    explored values set on its group, one step taken."""
    model = net()
    model.load_state_dict(saved["model"])
    opt = torch.optim.Adam(model.parameters())
    state = copy.deepcopy(saved["optimizer"])
    if moments is not None:
        state["state"] = moments
    state["param_groups"][0] |= {"lr": lr, "betas": (EXPLORED["beta1"], EXPLORED["beta2"]),
                                 "eps": EXPLORED["eps"], "weight_decay": EXPLORED["weight_decay"]}
    for key in ("initial_lr", "max_lr", "min_lr", "state_dtype"):
        state["param_groups"][0].pop(key, None)
    opt.load_state_dict(state)
    grads(model, 99)
    opt.step()
    return model


def fp32_moments(opt) -> dict:
    """The optimizer's state with int8 moments decoded (what its update computes with)."""
    out = {}
    for i, p in enumerate(opt.param_groups[0]["params"]):
        s = opt.state[p]
        dec = {}
        for name in ("exp_avg", "exp_avg_sq"):
            m = lowmem.as_moment(s, name)
            dec[name] = lowmem._load(m, torch.float32, lowmem._code(name == "exp_avg_sq", p.device),
                                     root=name == "exp_avg_sq").reshape(p.shape).clone()
        out[i] = {"step": s["step"].clone(), **dec}
    return out


@pytest.mark.parametrize("variant", [dict(), dict(state_dtype="int8"), dict(fused=True)])
def test_the_step_after_an_exploit_is_torchs_with_that_state_and_those_values(variant):
    saved = donor(config("cosine", **variant, **DONOR))
    model, opt, _ = exploit(saved, config("cosine", **variant, **EXPLORED))
    lr = opt.param_groups[0]["lr"]
    moments = fp32_moments(opt) if variant.get("state_dtype") == "int8" else None
    grads(model, 99)
    opt.step()
    expected = torch_step(saved, lr, moments)
    for p, q in zip(model.parameters(), expected.parameters(), strict=True):
        if variant:  # int8: moments re-encoded after the update; fused: a compiled loop
            assert_close(p, q, atol=1e-6, rtol=1e-5)
        else:
            assert_close(p, q)
