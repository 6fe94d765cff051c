"""Adam update math as plain functions over lists of tensors.

The optimizer classes in `optim.adam` only do bookkeeping (state, param groups) and call
`adam` here. Each implementation mutates `params`, `exp_avgs`, `exp_avg_sqs`,
`max_exp_avg_sqs` and `state_steps` in place and never writes to `grads`.

The operation order follows the non-capturable, non-differentiable branches of
`torch.optim.adam._single_tensor_adam` and `_multi_tensor_adam`, so results equal
`torch.optim.Adam`'s bit for bit (tests/test_adam.py checks this on CPU): any deviation
is a bug. `adam` also dispatches to the fused implementations (`optim.fused_cpu`,
`optim.triton_adam`) and the low-memory one (`optim.lowmem`): same algorithm, one pass over
memory or compact state, equal to these up to rounding.
"""

from __future__ import annotations

import torch
from torch import Tensor

from optim import fused_cpu, lowmem

__all__ = [
    "adam",
    "adam_foreach",
    "adam_single_tensor",
    "check_implementation",
    "default_foreach",
]


def _as_float(x: float | Tensor) -> float:
    # The multi-tensor path does its scalar math in Python doubles, as torch's does (which
    # takes float hyperparameters only; `adam` sends tensor ones to the single-tensor path).
    return float(x)


def _to_scalar(x: float | Tensor) -> float | Tensor:
    """A 1-element tensor as a 0-dim one, a float as it is (torch.optim's `_to_scalar`)."""
    return x.squeeze() if isinstance(x, Tensor) and x.dim() != 0 else x


def adam_single_tensor(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
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
) -> None:
    """Reference implementation: one Adam step, one tensor at a time.

    `max_exp_avg_sqs` is read only when `amsgrad` (it may be empty otherwise). Tensor lr
    and betas stay tensors, as in torch: `1 - lr * weight_decay`, the bias corrections and
    the step size are then computed in the hyperparameter's dtype, and beta1 in the param's
    dtype for the first moment, so a float32 lr on float64 params gives torch's exact bits.
    """
    lr, beta1, beta2 = _to_scalar(lr), _to_scalar(beta1), _to_scalar(beta2)
    beta1_by_key = {(beta1.device, beta1.dtype): beta1} if isinstance(beta1, Tensor) else None

    for i, param in enumerate(params):
        # New tensors, never in place: `.grad` belongs to the caller.
        grad = -grads[i] if maximize else grads[i]
        exp_avg = exp_avgs[i]
        exp_avg_sq = exp_avg_sqs[i]
        max_exp_avg_sq = max_exp_avg_sqs[i] if amsgrad else None
        step_t = state_steps[i]

        step_t += 1

        # Weight decay is applied on the complex tensors, before the real views (torch's order).
        if weight_decay != 0:
            if decoupled_weight_decay:
                param.mul_(1 - lr * weight_decay)
            else:
                grad = grad.add(param, alpha=weight_decay)

        # A complex number is updated as its (real, imag) pair: the moments are elementwise
        # over the two components, not |g|^2.
        if torch.is_complex(param):
            param = torch.view_as_real(param)
            grad = torch.view_as_real(grad)
            exp_avg = torch.view_as_real(exp_avg)
            exp_avg_sq = torch.view_as_real(exp_avg_sq)
            if max_exp_avg_sq is not None:
                max_exp_avg_sq = torch.view_as_real(max_exp_avg_sq)

        device_beta1 = beta1
        if beta1_by_key is not None:  # moved to the param's device and dtype, once each
            key = (param.device, param.dtype)
            if key not in beta1_by_key:
                beta1_by_key[key] = beta1.to(device=param.device, dtype=param.dtype)
            device_beta1 = beta1_by_key[key]
        exp_avg.lerp_(grad, 1 - device_beta1)
        exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)

        step = step_t.item()
        bias_correction1 = 1 - beta1**step
        bias_correction2 = 1 - beta2**step
        step_size = lr / bias_correction1
        bias_correction2_sqrt = bias_correction2**0.5

        if max_exp_avg_sq is not None:
            torch.maximum(max_exp_avg_sq, exp_avg_sq, out=max_exp_avg_sq)
            denom = (max_exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
        else:
            denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)

        param.addcdiv_(exp_avg, denom, value=-step_size)


def _group_by_device_and_dtype(
    params: list[Tensor], *tensor_lists: list[Tensor]
) -> list[list[list[Tensor]]]:
    """Split parallel lists into runs whose params share a device and dtype.

    Returns one `[params, *tensor_lists]` per (device, dtype), in first-seen order: a foreach
    kernel needs homogeneous lists. Complex tensors are replaced by their real views here.
    """
    groups: dict[tuple[torch.device, torch.dtype], list[list[Tensor]]] = {}
    for i, p in enumerate(params):
        lists = groups.setdefault((p.device, p.dtype), [[] for _ in range(1 + len(tensor_lists))])
        row = [p, *(tl[i] for tl in tensor_lists)]
        for out, t in zip(lists, row, strict=True):
            out.append(torch.view_as_real(t) if torch.is_complex(t) else t)
    return list(groups.values())


def adam_foreach(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
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
) -> None:
    """Multi-tensor implementation: the same step with `torch._foreach_*` kernels.

    Fewer kernel launches per step on accelerators; on CPU the foreach ops loop internally.
    """
    if not params:
        return
    lr, beta1, beta2 = _as_float(lr), _as_float(beta1), _as_float(beta2)

    # Keep the lists parallel even without amsgrad, so one grouping call covers everything.
    maxes = max_exp_avg_sqs if amsgrad else exp_avg_sqs
    for group in _group_by_device_and_dtype(
        params, grads, exp_avgs, exp_avg_sqs, maxes, state_steps
    ):
        g_params, g_grads, g_exp_avgs, g_exp_avg_sqs, g_maxes, g_steps = group

        if maximize:
            g_grads = torch._foreach_neg(g_grads)

        torch._foreach_add_(g_steps, 1)

        if weight_decay != 0:
            if decoupled_weight_decay:
                torch._foreach_mul_(g_params, 1 - lr * weight_decay)
            elif maximize:
                # g_grads is already our own copy (from the negation): reuse its memory.
                torch._foreach_add_(g_grads, g_params, alpha=weight_decay)
            else:
                g_grads = torch._foreach_add(g_grads, g_params, alpha=weight_decay)

        torch._foreach_lerp_(g_exp_avgs, g_grads, 1 - beta1)
        torch._foreach_mul_(g_exp_avg_sqs, beta2)
        torch._foreach_addcmul_(g_exp_avg_sqs, g_grads, g_grads, 1 - beta2)
        del g_grads  # drop the negated / decayed copy before allocating the denominators

        steps = [s.item() for s in g_steps]
        step_sizes = [(lr / (1 - beta1**step)) * -1 for step in steps]
        bias_correction2_sqrts = [(1 - beta2**step) ** 0.5 for step in steps]

        if amsgrad:
            torch._foreach_maximum_(g_maxes, g_exp_avg_sqs)
            denom = torch._foreach_sqrt(g_maxes)
        else:
            denom = torch._foreach_sqrt(g_exp_avg_sqs)
        torch._foreach_div_(denom, bias_correction2_sqrts)
        torch._foreach_add_(denom, eps)
        torch._foreach_addcdiv_(g_params, g_exp_avgs, denom, step_sizes)


def default_foreach(params: list[Tensor]) -> bool:
    """Whether `foreach=None` means the multi-tensor path: only when every param is on CUDA.

    Mirrors torch's default; on CPU the foreach ops are a loop anyway, so the simpler
    single-tensor path loses nothing.
    """
    return all(p.is_cuda and type(p) in (Tensor, torch.nn.Parameter) for p in params)


def _by_device_type(params: list[Tensor], *lists: list) -> dict[str, list[list]]:
    """Split parallel lists by the params' device type: `{"cpu": [params, *lists], ...}`."""
    if all(p.is_cpu for p in params):  # the usual case, checked cheaply
        return {"cpu": [params, *lists]}
    out: dict[str, list[list]] = {}
    for i, p in enumerate(params):
        rows = out.setdefault(p.device.type, [[] for _ in range(1 + len(lists))])
        rows[0].append(p)
        for row, values in zip(rows[1:], lists, strict=True):
            if values:  # max_exp_avg_sqs is empty without amsgrad
                row.append(values[i])
    return out


def check_implementation(foreach: bool | None, fused: bool | None, state_dtype: str) -> None:
    """Raise ValueError for a combination of implementation arguments that cannot be honoured.

    Low-memory state has no multi-tensor (foreach) path; it is one tensor at a time, or
    fused.
    """
    if state_dtype not in lowmem.STATE_DTYPES:
        raise ValueError(f"state_dtype must be 'fp32', 'bf16' or 'int8', got {state_dtype!r}")
    if fused and foreach:
        raise ValueError("fused=True and foreach=True cannot be used together")
    if foreach and state_dtype != "fp32":
        raise ValueError(f"foreach=True supports state_dtype 'fp32' only, got {state_dtype!r}")


def adam(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Tensor],
    exp_avg_sqs: list[Tensor],
    max_exp_avg_sqs: list[Tensor],
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
    foreach: bool | None = None,
    fused: bool | None = None,
    state_dtype: str = "fp32",
) -> None:
    """One Adam/AdamW step over parallel lists; the single place that picks an implementation.

    * ``fused=True``: per device, CPU params go to `optim.fused_cpu` (torch.compile) and
      CUDA params to `optim.triton_adam` (Triton), state in the param dtype or bf16; with
      int8 state, CPU params go to `optim.lowmem` compiled and CUDA params to
      `optim.triton_adam8` (its tensors too small to quantise to `optim.triton_adam`).
    * otherwise ``state_dtype`` "bf16" or "int8": `optim.lowmem.adam_low_memory`, one
      tensor at a time (the moments may be `optim.quant.Quantized`).
    * otherwise ``foreach`` (``None`` picks it by `default_foreach`): `adam_foreach`, else
      `adam_single_tensor`; both equal torch.optim.Adam bit for bit on CPU.
    """
    check_implementation(foreach, fused, state_dtype)
    hyper = {
        "lr": lr,
        "beta1": beta1,
        "beta2": beta2,
        "eps": eps,
        "weight_decay": weight_decay,
        "decoupled_weight_decay": decoupled_weight_decay,
        "amsgrad": amsgrad,
        "maximize": maximize,
    }
    lists = (params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, state_steps)
    if fused:
        # Imported on first use: Triton reads TRITON_INTERPRET when the kernel is defined,
        # and the tests set it before that; nor need CPU-only users pay for importing Triton.
        from optim import triton_adam

        for device_type, device_lists in _by_device_type(*lists).items():
            if device_type == "cpu":
                if state_dtype == "int8":
                    lowmem.adam_low_memory(*device_lists, **hyper, fused=True)
                else:
                    fused_cpu.adam_fused_cpu(*device_lists, **hyper)
            elif device_type == "cuda":  # one launch per device and dtype: see adam_triton
                if state_dtype == "int8":
                    from optim import triton_adam8

                    triton_adam8.adam8_triton(*device_lists, **hyper)
                else:
                    triton_adam.adam_triton(*device_lists, **hyper)
            else:
                raise ValueError(f"fused=True supports CPU and CUDA params, got {device_type}")
        return
    if state_dtype != "fp32":
        lowmem.adam_low_memory(*lists, **hyper)
        return
    if foreach is None:  # tensor hyperparameters: the single-tensor path, as in torch
        foreach = default_foreach(params) and not any(
            isinstance(x, Tensor) for x in (lr, beta1, beta2))
    impl = adam_foreach if foreach else adam_single_tensor
    impl(*lists, **hyper)
