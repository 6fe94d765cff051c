"""optim/base.py: torch's Optimizer without importing torch._dynamo until something compiles."""

from __future__ import annotations

import subprocess
import sys

import torch

from optim import base
from tests.conftest import ROOT

STEPS = """
import sys, torch
import optim
p = torch.nn.Parameter(torch.randn(4))
opt = {make}
for _ in range(2):
    p.grad = torch.randn(4)
    opt.step()
    opt.zero_grad()
state = opt.state_dict()
opt.load_state_dict(state)
opt.add_param_group({{"params": [torch.nn.Parameter(torch.randn(2))]}})
print("torch._dynamo" in sys.modules)
"""


def imports_dynamo(make: str) -> bool:
    out = subprocess.run([sys.executable, "-c", STEPS.format(make=make)], cwd=ROOT,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    return out.stdout.split()[-1] == "True"


def test_our_adam_trains_checkpoints_and_resumes_without_importing_dynamo():
    assert not imports_dynamo("optim.Adam([p], lr=1e-2)")
    assert not imports_dynamo("optim.AdamW([p], lr=1e-2, state_dtype='int8')")
    # What it saves: torch's own optimizer imports it on the same calls.
    assert imports_dynamo("torch.optim.Adam([p], lr=1e-2)")


def test_the_guarded_method_is_called_once_dynamo_is_loaded(monkeypatch):
    calls = []

    def plain(self, x):
        calls.append("plain")
        return x

    def guarded(self, x):
        calls.append("guarded")
        return x

    guarded.__wrapped__ = plain
    method = base._dynamo_on_demand(guarded)
    monkeypatch.delitem(sys.modules, base.DYNAMO, raising=False)
    assert method(None, 1) == 1
    monkeypatch.setitem(sys.modules, base.DYNAMO, object())
    assert method(None, 2) == 2
    assert calls == ["plain", "guarded"]


def test_zero_grad_inside_compiled_code_still_works():
    # With torch._dynamo loaded, torch's guard keeps dynamo from tracing into zero_grad.
    p = torch.nn.Parameter(torch.ones(3))
    opt = base.Optimizer([p], {"lr": 0.1})
    p.grad = torch.ones(3)

    @torch.compile(backend="eager")
    def clear() -> torch.Tensor:
        opt.zero_grad()
        return p * 2

    assert torch.equal(clear(), torch.full((3,), 2.0))
    assert p.grad is None
