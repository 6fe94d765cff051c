"""`torch.optim.Optimizer`, without importing `torch._dynamo` for a process that never compiles.

torch wraps `add_param_group`, `zero_grad`, `state_dict` and `load_state_dict` in
`torch._disable_dynamo`, which imports `torch._dynamo` at the first call so that a compiled
caller never traces into them. `Optimizer.__init__` calls `add_param_group`, so the first
optimizer of a process pays that import: about 1 s of CPU on top of `import torch`'s 1.3 s,
in every trial process of a search, although only `torch.compile` (a compiled model,
`fused=True` on CPU) ever needs it.

Here each of the four calls torch's own function directly while `torch._dynamo` has not
been imported, and torch's guarded one once it has: with no dynamo loaded nothing can be
compiling, so the guard has nothing to guard. The unwrapped function is the decorator's
`functools.wraps` target (`__wrapped__`); tests/test_private_parts.py names that attribute.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import torch

DYNAMO = "torch._dynamo"


def _dynamo_on_demand(guarded: Callable[..., Any]) -> Callable[..., Any]:
    """`guarded` (a torch._disable_dynamo-wrapped method) as a method that calls torch's
    unwrapped function until torch._dynamo is imported, and `guarded` after."""
    plain = getattr(guarded, "__wrapped__", guarded)  # a torch without the wrapper: itself

    @functools.wraps(plain)
    def method(self, *args: Any, **kwargs: Any) -> Any:
        return (guarded if DYNAMO in sys.modules else plain)(self, *args, **kwargs)

    return method


class Optimizer(torch.optim.Optimizer):
    """torch's Optimizer, the same in every respect but the import of torch._dynamo."""

    add_param_group = _dynamo_on_demand(torch.optim.Optimizer.add_param_group)
    zero_grad = _dynamo_on_demand(torch.optim.Optimizer.zero_grad)
    state_dict = _dynamo_on_demand(torch.optim.Optimizer.state_dict)
    load_state_dict = _dynamo_on_demand(torch.optim.Optimizer.load_state_dict)
