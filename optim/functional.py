"""Adam update math as plain functions over lists of tensors.

The optimizer classes in `optim.adam` only do bookkeeping (state, param groups) and call
`adam` here. Each implementation mutates `params`, `exp_avgs`, `exp_avg_sqs`,
`max_exp_avg_sqs` and `state_steps` in place and never writes to `grads`.

The operation order follows the non-capturable, non-differentiable branches of
`torch.optim.adam._single_tensor_adam` and `_multi_tensor_adam`, so results equal
`torch.optim.Adam`'s bit for bit (tests/test_adam.py checks this on CPU): any deviation
is a bug.
"""

from __future__ import annotations

import torch
from torch import Tensor

__all__ = ["adam", "adam_foreach", "adam_single_tensor", "default_foreach"]


def _as_float(x: float | Tensor) -> float:
    # Non-capturable paths do their scalar math in Python doubles, as torch does with float
    # hyperparameters; a tensor lr/beta therefore gives the same result as its `.item()`.
    return float(x)


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

    `max_exp_avg_sqs` is read only when `amsgrad` (it may be empty otherwise).
    """
    lr, beta1, beta2 = _as_float(lr), _as_float(beta1), _as_float(beta2)

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

        exp_avg.lerp_(grad, 1 - beta1)
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
) -> None:
    """One Adam/AdamW step over parallel lists; the single place that picks an implementation.

    `foreach=None` picks automatically (see `default_foreach`).
    """
    if foreach is None:
        foreach = default_foreach(params)
    impl = adam_foreach if foreach else adam_single_tensor
    impl(
        params,
        grads,
        exp_avgs,
        exp_avg_sqs,
        max_exp_avg_sqs,
        state_steps,
        lr=lr,
        beta1=beta1,
        beta2=beta2,
        eps=eps,
        weight_decay=weight_decay,
        decoupled_weight_decay=decoupled_weight_decay,
        amsgrad=amsgrad,
        maximize=maximize,
    )
