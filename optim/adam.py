"""Adam and AdamW optimizers: bookkeeping around `optim.functional.adam`.

State and param-group layout match `torch.optim.Adam` exactly, so a state_dict saved by one
loads into the other and training continues identically.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor

from optim.functional import adam

__all__ = ["Adam", "AdamW"]

Params = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


def _shown(value: float | Tensor) -> str:
    return repr(value.item()) if isinstance(value, Tensor) and value.dim() == 0 else repr(value)


def _check_scalar(name: str, value: float | Tensor) -> None:
    # A tensor hyperparameter is read with `float()` at each step; only a 0-dim tensor
    # unambiguously is one number.
    if isinstance(value, Tensor) and value.dim() != 0:
        shape = tuple(value.shape)
        raise ValueError(f"{name} must be a float or a 0-dim tensor, got shape {shape}")


def _validate(
    lr: float | Tensor,
    betas: tuple[float | Tensor, float | Tensor],
    eps: float,
    weight_decay: float,
) -> None:
    """Raise ValueError naming the first invalid hyperparameter and its value."""
    _check_scalar("lr", lr)
    # `not x >= 0` (rather than `x < 0`) also rejects NaN.
    if not (lr >= 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number >= 0, got {_shown(lr)}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    for i, beta in enumerate(betas):
        _check_scalar(f"betas[{i}]", beta)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {_shown(beta)}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def _scalar_dtype() -> torch.dtype:
    # Same rule as torch.optim's non-fused `step` tensors, so state tensors compare equal.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


class Adam(torch.optim.Optimizer):
    r"""Adam (Kingma & Ba, 2015, Algorithm 1), optionally with AMSGrad and decoupled decay.

    For each parameter :math:`\theta` with gradient :math:`g`, at step :math:`t = 1, 2, \dots`:

    .. math::
        \begin{aligned}
        g &\leftarrow -g \quad \text{if maximize} \\
        g &\leftarrow g + \lambda\theta \quad \text{(L2 decay, default)} \qquad
            \text{or} \qquad \theta \leftarrow (1 - \gamma\lambda)\,\theta
            \quad \text{(decoupled, AdamW)} \\
        m &\leftarrow \beta_1 m + (1 - \beta_1)\, g \\
        v &\leftarrow \beta_2 v + (1 - \beta_2)\, g^2 \\
        v_{\max} &\leftarrow \max(v_{\max}, v) \quad \text{if amsgrad (then used for } v
            \text{ below)} \\
        \theta &\leftarrow \theta - \frac{\gamma}{1 - \beta_1^t}\,
            \frac{m}{\sqrt{v} / \sqrt{1 - \beta_2^t} + \epsilon}
        \end{aligned}

    with :math:`m_0 = v_0 = v_{\max,0} = 0`. Note :math:`\epsilon` is added to the
    bias-corrected :math:`\sqrt{\hat v}`, as in the paper and in ``torch.optim.Adam``.
    Complex parameters are optimized as pairs of reals (``torch.view_as_real``).

    Args:
        params: parameters, named parameters, or param-group dicts.
        lr: learning rate :math:`\gamma` (float or 0-dim tensor).
        betas: :math:`(\beta_1, \beta_2)`, each in [0, 1) (floats or 0-dim tensors).
        eps: :math:`\epsilon`, keeps the denominator away from zero.
        weight_decay: :math:`\lambda`.
        decoupled_weight_decay: decay the weights directly (AdamW) instead of adding
            :math:`\lambda\theta` to the gradient, so decay is not rescaled by :math:`v`.
        amsgrad: use the running maximum of :math:`v` (Reddi et al., 2018).
        maximize: ascend the objective instead of descending.
        foreach: use the multi-tensor (``torch._foreach_*``) path; ``None`` picks it when
            every parameter is on CUDA.

    The state (``step`` as a 0-dim CPU tensor, ``exp_avg``, ``exp_avg_sq`` and, with
    amsgrad, ``max_exp_avg_sq``) and param-group keys are those of ``torch.optim.Adam``.
    ``capturable``, ``differentiable`` and ``fused`` exist only for that compatibility:
    this implementation is always the non-capturable, non-differentiable, unfused one.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 0.0,
        amsgrad: bool = False,
        *,
        decoupled_weight_decay: bool = False,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        _validate(lr, betas, eps, weight_decay)
        defaults = {
            "lr": lr,
            "betas": tuple(betas),
            "eps": eps,
            "weight_decay": weight_decay,
            "amsgrad": amsgrad,
            "maximize": maximize,
            "foreach": foreach,
            "capturable": False,
            "differentiable": False,
            "fused": None,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        super().__init__(params, defaults)

    def __setstate__(self, state: dict[str, Any]) -> None:
        # Called by load_state_dict and unpickling: fill keys that older or foreign
        # state_dicts may lack, and upgrade a plain-number `step` to torch's tensor form.
        super().__setstate__(state)
        for group in self.param_groups:
            group.setdefault("amsgrad", False)
            group.setdefault("maximize", False)
            group.setdefault("foreach", None)
            group.setdefault("capturable", False)
            group.setdefault("differentiable", False)
            group.setdefault("fused", None)
            group.setdefault("decoupled_weight_decay", False)
            for p in group["params"]:
                p_state = self.state.get(p, {})
                if p_state and not torch.is_tensor(p_state["step"]):
                    p_state["step"] = torch.tensor(float(p_state["step"]), dtype=_scalar_dtype())

    def _gather(
        self, group: dict[str, Any]
    ) -> tuple[list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor], list[Tensor]]:
        """Collect the params that have a gradient and their state, creating state lazily."""
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                # `step` lives on the CPU: it is read as a Python number every step, and a
                # device tensor would cost a sync each time.
                state["step"] = torch.tensor(0.0, dtype=_scalar_dtype())
                state["exp_avg"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                state["exp_avg_sq"] = torch.zeros_like(p, memory_format=torch.preserve_format)
                if group["amsgrad"]:
                    state["max_exp_avg_sq"] = torch.zeros_like(
                        p, memory_format=torch.preserve_format
                    )
            params.append(p)
            grads.append(p.grad)
            exp_avgs.append(state["exp_avg"])
            exp_avg_sqs.append(state["exp_avg_sq"])
            if group["amsgrad"]:
                max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    @torch.no_grad()
    def step(self, closure: Callable[[], float | Tensor] | None = None) -> float | Tensor | None:
        """Perform one optimization step; `closure` (optional) re-evaluates and returns the loss."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()

        # Check every gradient before touching anything, so a bad one cannot leave the
        # model half-updated.
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is not None and p.grad.is_sparse:
                    raise RuntimeError(
                        "Adam does not support sparse gradients; use torch.optim.SparseAdam"
                    )

        for group in self.param_groups:
            beta1, beta2 = group["betas"]
            adam(
                *self._gather(group),
                lr=group["lr"],
                beta1=beta1,
                beta2=beta2,
                eps=group["eps"],
                weight_decay=group["weight_decay"],
                decoupled_weight_decay=group["decoupled_weight_decay"],
                amsgrad=group["amsgrad"],
                maximize=group["maximize"],
                foreach=group["foreach"],
            )
        return loss


class AdamW(Adam):
    """Adam with decoupled weight decay (Loshchilov & Hutter, 2019): ``Adam(...,
    decoupled_weight_decay=True)`` with ``weight_decay`` defaulting to 1e-2, like
    ``torch.optim.AdamW``.
    """

    def __init__(
        self,
        params: Params,
        lr: float | Tensor = 1e-3,
        betas: tuple[float | Tensor, float | Tensor] = (0.9, 0.999),
        eps: float = 1e-8,
        weight_decay: float = 1e-2,
        amsgrad: bool = False,
        *,
        maximize: bool = False,
        foreach: bool | None = None,
    ) -> None:
        super().__init__(
            params,
            lr,
            betas,
            eps,
            weight_decay,
            decoupled_weight_decay=True,
            amsgrad=amsgrad,
            maximize=maximize,
            foreach=foreach,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # An AdamW stays AdamW whatever state it loads (torch.optim.AdamW does the same).
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
