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

from optim.base import Optimizer
from optim.functional import adam, check_implementation
from optim.lowmem import as_moment, init_moments

__all__ = ["Adam", "AdamW"]

Params = Iterable[Tensor] | Iterable[dict[str, Any]] | Iterable[tuple[str, Tensor]]


def _shown(value: float | Tensor) -> str:
    return repr(value.item()) if isinstance(value, Tensor) and value.numel() == 1 else repr(value)


def _check_scalar(name: str, value: float | Tensor, foreach: bool | None) -> None:
    # torch's rules: a tensor hyperparameter holds one number (any shape, squeezed at each
    # step), and the non-capturable multi-tensor path takes none.
    if isinstance(value, Tensor):
        if value.numel() != 1:
            shape = tuple(value.shape)
            raise ValueError(f"{name} must be a float or a 1-element tensor, got shape {shape}")
        if foreach:
            raise ValueError(f"{name} as a Tensor is not supported for capturable=False and "
                             "foreach=True")


def _validate(
    lr: float | Tensor,
    betas: tuple[float | Tensor, float | Tensor],
    eps: float,
    weight_decay: float,
    foreach: bool | None = None,
) -> None:
    """Raise ValueError naming the first invalid hyperparameter and its value."""
    _check_scalar("lr", lr, foreach)
    # `not x >= 0` (rather than `x < 0`) also rejects NaN.
    if not (lr >= 0.0 and math.isfinite(lr)):
        raise ValueError(f"lr must be a finite number >= 0, got {_shown(lr)}")
    if len(betas) != 2:
        raise ValueError(f"betas must be a pair (beta1, beta2), got {betas!r}")
    if isinstance(betas[0], Tensor) != isinstance(betas[1], Tensor):
        raise ValueError("betas must be either both floats or both Tensors")
    for i, beta in enumerate(betas):
        _check_scalar(f"betas[{i}]", beta, foreach)
        if not 0.0 <= beta < 1.0:
            raise ValueError(f"betas[{i}] must be in [0, 1), got {_shown(beta)}")
    if not eps >= 0.0:
        raise ValueError(f"eps must be >= 0, got {eps!r}")
    if not weight_decay >= 0.0:
        raise ValueError(f"weight_decay must be >= 0, got {weight_decay!r}")


def _scalar_dtype() -> torch.dtype:
    # Same rule as torch.optim's non-fused `step` tensors, so state tensors compare equal.
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _new_step(param: Tensor, *, fused: bool) -> Tensor:
    """A zero `step` counter laid out as torch.optim.Adam lays it out."""
    if fused:
        # On the param's device, float32: the Triton kernel reads it there, which keeps a
        # captured CUDA graph correct as the count grows.
        return torch.zeros((), dtype=torch.float32, device=param.device)
    # On the CPU otherwise: read as a Python number every step, and a device tensor would
    # cost a sync each time.
    return torch.tensor(0.0, dtype=_scalar_dtype())


class _Verbatim:
    """Wraps a state tensor so torch's load_state_dict passes it through uncast."""

    def __init__(self, tensor: Tensor) -> None:
        self.tensor = tensor


class Adam(Optimizer):
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
        fused: one pass over memory per step: on CPU a ``torch.compile``-generated loop
            (`optim.fused_cpu`), on CUDA a Triton kernel for all of a group's tensors
            (`optim.triton_adam`, CUDA-graph capturable). Equal to the other paths up to
            rounding, not bit for bit. ``None`` (default) keeps the unfused paths.
        state_dtype: storage of the moments: ``"fp32"`` (torch's layout: the param's
            dtype), ``"bf16"`` or ``"int8"`` (block-wise quantised); see `optim.lowmem`.
            The update math is fp32 in every case. Both run one tensor at a time, or
            fused with ``fused=True`` (for int8: `optim.lowmem` compiled on CPU,
            `optim.triton_adam8` on CUDA).
            ``foreach=True`` needs ``"fp32"``, and ``foreach=None`` never picks the
            multi-tensor path for low-memory state.

    With ``state_dtype="fp32"`` the state (``step`` as a 0-dim tensor, ``exp_avg``,
    ``exp_avg_sq`` and, with amsgrad, ``max_exp_avg_sq``) and param-group keys are those of
    ``torch.optim.Adam``, fused or not, so state_dicts move between the two. ``step`` lives
    on the CPU, except with ``fused=True`` where it is a float32 tensor on the param's
    device as in torch (the Triton kernel reads it there). ``capturable`` and
    ``differentiable`` exist only for that compatibility: the unfused paths are the
    non-capturable, non-differentiable ones.
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
        fused: bool | None = None,
        state_dtype: str = "fp32",
    ) -> None:
        _validate(lr, betas, eps, weight_decay, foreach)
        check_implementation(foreach, fused, state_dtype)
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
            "fused": fused,
            "decoupled_weight_decay": decoupled_weight_decay,
        }
        if state_dtype != "fp32":
            # Only when set: with the default, param groups stay key-for-key torch's.
            defaults["state_dtype"] = state_dtype
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
    ) -> tuple[list[Tensor], list[Tensor], list[Any], list[Any], list[Any], list[Tensor]]:
        """Collect the params that have a gradient and their state, creating state lazily.

        Moments come back as tensors, or as `optim.quant.Quantized` for int8 state.
        """
        params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps = [], [], [], [], [], []
        state_dtype = group.get("state_dtype", "fp32")
        for p in group["params"]:
            if p.grad is None:
                continue
            state = self.state[p]
            if not state:
                state["step"] = _new_step(p, fused=bool(group["fused"]))
                state.update(init_moments(p, state_dtype, group["amsgrad"]))
            params.append(p)
            grads.append(p.grad)
            if state_dtype == "int8":
                exp_avgs.append(as_moment(state, "exp_avg"))
                exp_avg_sqs.append(as_moment(state, "exp_avg_sq"))
                if group["amsgrad"]:
                    max_exp_avg_sqs.append(as_moment(state, "max_exp_avg_sq"))
            else:
                exp_avgs.append(state["exp_avg"])
                exp_avg_sqs.append(state["exp_avg_sq"])
                if group["amsgrad"]:
                    max_exp_avg_sqs.append(state["max_exp_avg_sq"])
            steps.append(state["step"])
        return params, grads, exp_avgs, exp_avg_sqs, max_exp_avg_sqs, steps

    def state_bytes(self) -> int:
        """Bytes held by the optimizer's state tensors: moments and int8 block scales.

        The per-tensor ``step`` counters are left out: one scalar per tensor, not per
        element. So for fp32 params: 8 bytes/param with ``state_dtype="fp32"`` (12 with
        amsgrad), 4 with ``"bf16"``, and with ``"int8"`` 2 + 8/256 ~= 2.03 for tensors of
        at least `optim.lowmem.MIN_QUANTIZED_NUMEL` elements (smaller ones stay fp32).
        """
        return sum(
            value.numel() * value.element_size()
            for state in self.state.values()
            for key, value in state.items()
            if key != "step" and torch.is_tensor(value)
        )

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load like torch.optim.Optimizer, but keep low-memory state in its saved dtypes.

        torch casts every state tensor of a floating-point param to the param's dtype: right
        for fp32 state, but it would widen bf16 moments, turn int8 codes into floats and
        round int8 scales to a bf16 param's precision. Tensors of groups saved with a
        low-memory ``state_dtype`` are therefore only moved to the param's device.
        """
        low_memory = {
            i
            for group in state_dict["param_groups"]
            if group.get("state_dtype", "fp32") != "fp32"
            for i in group["params"]
        }
        state = {
            i: {k: _Verbatim(v) if k != "step" and torch.is_tensor(v) else v for k, v in s.items()}
            if i in low_memory
            else s
            for i, s in state_dict["state"].items()
        }
        super().load_state_dict({**state_dict, "state": state})
        for p, p_state in self.state.items():
            for key, value in p_state.items():
                if isinstance(value, _Verbatim):
                    p_state[key] = value.tensor.to(device=p.device)

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
                fused=group["fused"],
                state_dtype=group.get("state_dtype", "fp32"),
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
        fused: bool | None = None,
        state_dtype: str = "fp32",
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
            fused=fused,
            state_dtype=state_dtype,
        )

    def __setstate__(self, state: dict[str, Any]) -> None:
        # An AdamW stays AdamW whatever state it loads (torch.optim.AdamW does the same).
        super().__setstate__(state)
        for group in self.param_groups:
            group["decoupled_weight_decay"] = True
