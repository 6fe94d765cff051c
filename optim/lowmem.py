"""Adam with low-memory state: the moments stored in bf16 or in block-wise 8 bits.

``state_dtype`` (an `optim.Adam` argument) chooses the storage of exp_avg, exp_avg_sq and
max_exp_avg_sq; the update itself is always computed in fp32 (fp64 for fp64 params):

* ``"fp32"``: torch's layout, moments in the param's dtype (8 bytes/param for fp32 params).
* ``"bf16"``: moments in bfloat16 (4 bytes/param). The update reads them, computes in
  fp32 and rounds the new moments to nearest even.
* ``"int8"``: block-wise dynamic quantisation (`optim.quant`, Dettmers et al. 2021), about
  2.03 bytes/param: uint8 codes plus one fp32 scale per 256 elements, for each moment.
  ``exp_avg`` uses the signed dynamic code. For the second moment the *square root*
  ``sqrt(v)`` is quantised, with the unsigned dynamic code: the update divides by
  ``sqrt(v)``, so that is the quantity whose relative error matters, and taking the root
  halves the dynamic range (in decades) that the code must span within a block. Tensors
  with fewer than `MIN_QUANTIZED_NUMEL` elements (biases, norms) keep fp32 moments, as in
  the paper: they cost little and are the most sensitive.

State keys for an int8-quantised tensor: ``exp_avg`` (uint8 codes, param shape) with
``exp_avg_absmax`` (fp32 per block), ``exp_avg_sq`` (codes of sqrt(v)) with
``exp_avg_sq_absmax``, and with amsgrad ``max_exp_avg_sq`` (codes of sqrt(vmax)) with
``max_exp_avg_sq_absmax``. Such a state_dict loads only into `optim.Adam`, not torch's.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from optim.fused_cpu import adam_update, hyper_values, run_compiled
from optim.quant import Quantized, dequantize, dynamic_code, quantize

__all__ = [
    "MIN_QUANTIZED_NUMEL",
    "MOMENTS",
    "STATE_DTYPES",
    "Moment",
    "adam_low_memory",
    "as_moment",
    "init_moments",
]

STATE_DTYPES = ("fp32", "bf16", "int8")
MIN_QUANTIZED_NUMEL = 4096
MOMENTS = ("exp_avg", "exp_avg_sq", "max_exp_avg_sq")

Moment = Tensor | Quantized

_SIGNED = dynamic_code(signed=True)
_UNSIGNED = dynamic_code(signed=False)


@functools.cache
def _code(root: bool, device: torch.device) -> Tensor:
    """The code table for a moment, kept on `device` (one copy per device, not per step)."""
    return (_UNSIGNED if root else _SIGNED).to(device)


def _opmath(dtype: torch.dtype) -> torch.dtype:
    return torch.float64 if dtype in (torch.float64, torch.complex128) else torch.float32


def init_moments(param: Tensor, state_dtype: str, amsgrad: bool) -> dict[str, Tensor]:
    """Zero moments for `param` stored as `state_dtype` says, as state-dict entries."""
    names = MOMENTS if amsgrad else MOMENTS[:2]
    if state_dtype == "fp32":
        return {n: torch.zeros_like(param, memory_format=torch.preserve_format) for n in names}
    real = torch.view_as_real(param) if param.is_complex() else param
    if state_dtype == "bf16":
        return {n: torch.zeros_like(real, dtype=torch.bfloat16) for n in names}
    if real.numel() < MIN_QUANTIZED_NUMEL:
        return {n: torch.zeros_like(real, dtype=_opmath(real.dtype)) for n in names}
    blocks = -(-real.numel() // 256)
    state = {}
    for n in names:
        # All-zero codes with absmax 0 decode to zeros whatever the code table.
        # Codes laid out like the param: blocks follow its memory order (`optim.quant`).
        state[n] = torch.zeros_like(real, dtype=torch.uint8)
        state[f"{n}_absmax"] = torch.zeros(blocks, dtype=torch.float32, device=param.device)
    return state


def as_moment(state: dict[str, Tensor], name: str) -> Moment:
    """State entry `name` as the update sees it: a tensor, or `Quantized` if it has scales."""
    absmax = state.get(f"{name}_absmax")
    return state[name] if absmax is None else Quantized(state[name], absmax)


def _load(moment: Moment, opmath: torch.dtype, code: Tensor, *, root: bool) -> Tensor:
    """The moment in `opmath`; for a quantised second moment the stored root is squared."""
    if isinstance(moment, Quantized):
        value = dequantize(moment, code).to(opmath)
        return value * value if root else value
    return moment.to(opmath)


def _store(moment: Moment, value: Tensor, code: Tensor, *, root: bool) -> None:
    if isinstance(moment, Quantized):
        quantize(value.sqrt() if root else value, code, moment)
    else:
        moment.copy_(value)


def _update_one(
    param: Tensor,
    grad: Tensor,
    exp_avg: Moment,
    exp_avg_sq: Moment,
    max_exp_avg_sq: Moment | None,
    coefficients: Tensor,
    signed_code: Tensor,
    unsigned_code: Tensor,
    *,
    maximize: bool,
    weight_decay: bool,
    decoupled: bool,
) -> None:
    """Decode one tensor's moments, apply `optim.fused_cpu.adam_update`, encode them again.

    `coefficients` holds the step size, sqrt(bias correction 2), then the values of
    `optim.fused_cpu._HYPER`; it is cast to the tensor's opmath dtype here.
    """
    real = torch.view_as_real(param) if param.is_complex() else param
    grad = torch.view_as_real(grad) if grad.is_complex() else grad
    opmath = _opmath(real.dtype)
    coefficients = coefficients.to(opmath)
    p, m, v, vmax = adam_update(
        real,
        grad,
        _load(exp_avg, opmath, signed_code, root=False),
        _load(exp_avg_sq, opmath, unsigned_code, root=True),
        None if max_exp_avg_sq is None else _load(max_exp_avg_sq, opmath, unsigned_code, root=True),
        coefficients[0],
        coefficients[1],
        coefficients[2:],
        maximize=maximize,
        weight_decay=weight_decay,
        decoupled=decoupled,
    )
    real.copy_(p)
    _store(exp_avg, m, signed_code, root=False)
    _store(exp_avg_sq, v, unsigned_code, root=True)
    if max_exp_avg_sq is not None:
        _store(max_exp_avg_sq, vmax, unsigned_code, root=True)


def _update_all(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Moment],
    exp_avg_sqs: list[Moment],
    max_exp_avg_sqs: list[Moment],
    coefficients: Tensor,
    signed_code: Tensor,
    unsigned_code: Tensor,
    maximize: bool,
    weight_decay: bool,
    decoupled: bool,
) -> None:
    """`_update_one` for every tensor; row i of `coefficients` is tensor i's (compiled whole
    for ``fused=True``)."""
    for i, param in enumerate(params):
        _update_one(
            param,
            grads[i],
            exp_avgs[i],
            exp_avg_sqs[i],
            max_exp_avg_sqs[i] if max_exp_avg_sqs else None,
            coefficients[i],
            signed_code,
            unsigned_code,
            maximize=maximize,
            weight_decay=weight_decay,
            decoupled=decoupled,
        )


def adam_low_memory(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Moment],
    exp_avg_sqs: list[Moment],
    max_exp_avg_sqs: list[Moment],
    state_steps: list[Tensor],
    *,
    lr: float | Tensor,
    beta1: float | Tensor,
    beta2: float | Tensor,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
    fused: bool = False,
) -> None:
    """One Adam step with moments stored in bf16 or int8, one tensor at a time.

    Each tensor: decode its moments to fp32, apply `optim.fused_cpu.adam_update` (the same
    math as every other path), write the param back and encode the new moments. Eagerly
    (the default), decoding one tensor at a time bounds the extra memory by the largest
    tensor's fp32 moments. ``fused=True`` runs the same code through `torch.compile` (CPU),
    which fuses each tensor's decode, update and encode into a few loops over memory.
    """
    if not params:
        return
    lr, beta1, beta2 = float(lr), float(beta1), float(beta2)
    torch._foreach_add_(state_steps, 1)
    steps = torch.stack(state_steps).tolist()
    hyper = hyper_values(lr, beta1, beta2, eps, weight_decay)
    device = params[0].device
    # Python doubles, then one cast per tensor to its opmath: as the reference computes them.
    coefficients = torch.tensor(
        [[lr / (1 - beta1**t), (1 - beta2**t) ** 0.5, *hyper] for t in steps],
        dtype=torch.float64,
        device=device,
    )
    args = (
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs if amsgrad else [],
        coefficients,
        _code(False, device),
        _code(True, device),
        maximize,
        weight_decay != 0,
        decoupled_weight_decay,
    )
    if fused:  # dequantise, update and requantise each tensor in a few fused loops
        run_compiled(_update_all, *args)
    else:
        _update_all(*args)
