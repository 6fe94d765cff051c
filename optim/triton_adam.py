"""Fused Adam/AdamW for CUDA in Triton: every tensor of a parameter group in one kernel launch.

Algorithm (per element, fp32 math whatever the storage dtype; see `optim.adam.Adam`)::

    g <- -g                           if maximize
    theta <- (1 - lr*lambda) theta   if decoupled decay, else g <- g + lambda theta
    m <- m + (1 - beta1) (g - m)
    v <- beta2 v + (1 - beta2) g^2
    vmax <- max(vmax, v)              if amsgrad (then used for v below)
    theta <- theta - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)

Layout. A group's tensors stay where they are (no copy into flat buffers); the kernel finds
them through two small int64 tables on the device:

* the tensor table, one row per tensor: ``numel``, then the addresses of param, grad,
  exp_avg, exp_avg_sq, max_exp_avg_sq (the exp_avg_sq again without amsgrad) and step;
* the chunk table, one row per program: ``(tensor row, chunk index)``; program ``i``
  updates elements ``[index * CHUNK, (index + 1) * CHUNK)`` of its tensor.

So a step is two launches whatever the number of tensors: ``torch._foreach_add_`` on the
step counters, then this kernel.

CUDA graphs. The step count and (for a tensor ``lr``) the learning rate are read from device
memory inside the kernel, and the bias corrections are computed there, so a captured step
replays correctly as ``step`` and ``lr`` change. The tables are cached by the tensors'
addresses: take one eager step before capturing (as for any optimizer, to create its state),
so capture finds them and does no host-to-device copy.

Triton is optional: without it `HAS_TRITON` is False and `adam_triton` raises.
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor

from optim.layout import flat_views

try:  # optim works without Triton; only fused=True on CUDA needs it.
    import triton
    import triton.language as tl
except ImportError:  # pragma: no cover - depends on the installation
    triton = None
    tl = None

__all__ = ["BLOCK", "CHUNK", "HAS_TRITON", "adam_triton"]

HAS_TRITON = triton is not None

# Elements per program and per vectorised block. Not tuned on a GPU yet (none was available
# where this was written); 4 blocks of 1024 per program keep ResNet-18 at ~2.8k programs.
BLOCK = 1024
CHUNK = 4096

_TABLE_CACHE_SIZE = 16
_tensor_tables: OrderedDict[tuple, tuple[Tensor, bool]] = OrderedDict()
_chunk_tables: OrderedDict[tuple, Tensor] = OrderedDict()

if HAS_TRITON:
    _TL_DTYPES = {
        torch.float32: tl.float32,
        torch.bfloat16: tl.bfloat16,
        torch.float16: tl.float16,
    }

    @triton.jit
    def _round_to_bf16(x):
        """fp32 -> bf16, round to nearest even, done by hand: the GPU's own conversion rounds
        the same way, but Triton's CPU interpreter (used by the tests) truncates."""
        bits = x.to(tl.uint32, bitcast=True)
        rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16
        rounded = tl.where(x != x, 0x7FC0, rounded)  # NaN stays a (quiet) NaN
        return rounded.to(tl.uint16).to(tl.bfloat16, bitcast=True)

    @triton.jit
    def _load(ptrs, mask, MASKED: tl.constexpr):
        x = tl.load(ptrs, mask=mask, other=0.0) if MASKED else tl.load(ptrs)
        return x.to(tl.float32)

    @triton.jit
    def _store(ptrs, x, mask, DTYPE: tl.constexpr, MASKED: tl.constexpr):
        x = _round_to_bf16(x) if DTYPE.is_bf16() else x.to(DTYPE)
        if MASKED:
            tl.store(ptrs, x, mask=mask)
        else:
            tl.store(ptrs, x)

    @triton.jit
    def adam_math(
        p,
        g,
        m,
        v,
        vmax,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        step_size,
        bias_correction2_sqrt,
        MAXIMIZE: tl.constexpr,
        HAS_WEIGHT_DECAY: tl.constexpr,
        DECOUPLED: tl.constexpr,
        AMSGRAD: tl.constexpr,
    ):
        """The update of the module docstring on fp32 values: new (p, m, v, vmax); `vmax` is
        returned unchanged without amsgrad. Shared with the int8 kernel (`optim.triton_adam8`)."""
        if MAXIMIZE:
            g = -g
        if HAS_WEIGHT_DECAY:
            if DECOUPLED:
                p = p * (1.0 - lr * weight_decay)
            else:
                g = g + weight_decay * p
        m = m + (1.0 - beta1) * (g - m)
        v = beta2 * v + (1.0 - beta2) * g * g
        if AMSGRAD:
            vmax = tl.maximum(vmax, v)
            denom = tl.div_rn(tl.sqrt_rn(vmax), bias_correction2_sqrt) + eps
        else:
            denom = tl.div_rn(tl.sqrt_rn(v), bias_correction2_sqrt) + eps
        p = p - step_size * tl.div_rn(m, denom)
        return p, m, v, vmax

    @triton.jit
    def step_scalars(step_ptr, lr_ptr, lr, beta1, beta2, LR_IS_TENSOR: tl.constexpr):
        """(lr, step size, sqrt(bias correction 2)) from the step count in device memory.

        beta^t as exp2(t log2 beta): beta = 0 gives 0, as it should."""
        step = tl.load(step_ptr)
        if LR_IS_TENSOR:
            lr = tl.load(lr_ptr).to(tl.float32)
        bias_correction1 = 1.0 - tl.exp2(step * tl.log2(beta1))
        bias_correction2 = 1.0 - tl.exp2(step * tl.log2(beta2))
        return lr, tl.div_rn(lr, bias_correction1), tl.sqrt_rn(bias_correction2)

    @triton.jit
    def _update_block(
        p_ptrs,
        g_ptrs,
        m_ptrs,
        v_ptrs,
        vmax_ptrs,
        mask,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        step_size,
        bias_correction2_sqrt,
        P_DTYPE: tl.constexpr,
        S_DTYPE: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        HAS_WEIGHT_DECAY: tl.constexpr,
        DECOUPLED: tl.constexpr,
        AMSGRAD: tl.constexpr,
        MASKED: tl.constexpr,
    ):
        """`adam_math` on one block of elements, loaded from and stored to memory."""
        g = _load(g_ptrs, mask, MASKED)
        p = _load(p_ptrs, mask, MASKED)
        m = _load(m_ptrs, mask, MASKED)
        v = _load(v_ptrs, mask, MASKED)
        vmax = _load(vmax_ptrs, mask, MASKED) if AMSGRAD else v
        p, m, v, vmax = adam_math(
            p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, step_size,
            bias_correction2_sqrt, MAXIMIZE, HAS_WEIGHT_DECAY, DECOUPLED, AMSGRAD,
        )  # fmt: skip
        if AMSGRAD:
            _store(vmax_ptrs, vmax, mask, S_DTYPE, MASKED)
        _store(p_ptrs, p, mask, P_DTYPE, MASKED)
        _store(m_ptrs, m, mask, S_DTYPE, MASKED)
        _store(v_ptrs, v, mask, S_DTYPE, MASKED)

    @triton.jit
    def _adam_kernel(
        tensors,
        chunks,
        lr_ptr,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        P_DTYPE: tl.constexpr,
        S_DTYPE: tl.constexpr,
        LR_IS_TENSOR: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        HAS_WEIGHT_DECAY: tl.constexpr,
        DECOUPLED: tl.constexpr,
        AMSGRAD: tl.constexpr,
        ALIGNED: tl.constexpr,
        CHUNK: tl.constexpr,
        BLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        row = tl.load(chunks + 2 * pid)
        start = tl.load(chunks + 2 * pid + 1) * CHUNK
        entry = tensors + row * 7  # numel + 6 addresses, see the module docstring
        numel = tl.load(entry)
        p_ptr = tl.load(entry + 1).to(tl.pointer_type(P_DTYPE))
        g_ptr = tl.load(entry + 2).to(tl.pointer_type(P_DTYPE))
        m_ptr = tl.load(entry + 3).to(tl.pointer_type(S_DTYPE))
        v_ptr = tl.load(entry + 4).to(tl.pointer_type(S_DTYPE))
        vmax_ptr = tl.load(entry + 5).to(tl.pointer_type(S_DTYPE))
        step_ptr = tl.load(entry + 6).to(tl.pointer_type(tl.float32))
        if ALIGNED:  # every address is 16-byte aligned: lets the compiler vectorise.
            p_ptr = tl.multiple_of(p_ptr, 16)
            g_ptr = tl.multiple_of(g_ptr, 16)
            m_ptr = tl.multiple_of(m_ptr, 16)
            v_ptr = tl.multiple_of(v_ptr, 16)
            vmax_ptr = tl.multiple_of(vmax_ptr, 16)

        lr, step_size, bias_correction2_sqrt = step_scalars(
            step_ptr, lr_ptr, lr, beta1, beta2, LR_IS_TENSOR
        )  # once per program

        for off in tl.range(0, CHUNK, BLOCK):
            offs = start + off + tl.arange(0, BLOCK)
            # Full blocks go unmasked: a mask from a runtime `numel` would stop the compiler
            # from vectorising the loads and stores.
            if start + off + BLOCK <= numel:
                _update_block(
                    p_ptr + offs,
                    g_ptr + offs,
                    m_ptr + offs,
                    v_ptr + offs,
                    vmax_ptr + offs,
                    None,
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    step_size,
                    bias_correction2_sqrt,
                    P_DTYPE,
                    S_DTYPE,
                    MAXIMIZE,
                    HAS_WEIGHT_DECAY,
                    DECOUPLED,
                    AMSGRAD,
                    False,
                )
            elif start + off < numel:
                _update_block(
                    p_ptr + offs,
                    g_ptr + offs,
                    m_ptr + offs,
                    v_ptr + offs,
                    vmax_ptr + offs,
                    offs < numel,
                    lr,
                    beta1,
                    beta2,
                    eps,
                    weight_decay,
                    step_size,
                    bias_correction2_sqrt,
                    P_DTYPE,
                    S_DTYPE,
                    MAXIMIZE,
                    HAS_WEIGHT_DECAY,
                    DECOUPLED,
                    AMSGRAD,
                    True,
                )


def _cached(cache: OrderedDict, key: tuple, build: Callable[[], Any]) -> Any:
    """`cache[key]`, built on a miss; the least recently used entry goes past the limit."""
    value = cache.get(key)
    if value is None:
        value = cache[key] = build()
        if len(cache) > _TABLE_CACHE_SIZE:
            cache.popitem(last=False)
    else:
        cache.move_to_end(key)
    return value


def _to_device(rows: list[list[int]], device: torch.device) -> Tensor:
    table = torch.tensor(rows, dtype=torch.int64)
    if device.type == "cuda":
        # Pinned and asynchronous: no host stall (the caching host allocator keeps the
        # buffer alive until the copy has run).
        return table.pin_memory().to(device, non_blocking=True)
    return table.to(device)


def _tables_for(
    rows: list[tuple[Tensor, ...]], device: torch.device, chunk: int
) -> tuple[Tensor, Tensor, bool]:
    """(tensor table, chunk table, all 16-byte aligned?) for these tensors.

    The chunk table depends on the sizes only and is built once. The tensor table holds
    addresses and is cached by them; grads are usually new tensors every step
    (``zero_grad(set_to_none=True)``), so it is rebuilt then: a few hundred bytes copied
    asynchronously, where torch's multi-tensor kernels pass the same through kernel
    arguments.
    """
    numels = tuple(row[0].numel() for row in rows)
    addresses = [[t.data_ptr() for t in row] for row in rows]

    def tensor_table() -> tuple[Tensor, bool]:
        aligned = all(a % 16 == 0 for row in addresses for a in row[:-1])  # not `step`
        table = [[n, *row] for n, row in zip(numels, addresses, strict=True)]
        return _to_device(table, device), aligned

    def chunk_table() -> Tensor:
        pairs = [[i, c] for i, n in enumerate(numels) for c in range(triton.cdiv(n, chunk))]
        return _to_device(pairs, device)

    tensors, aligned = _cached(
        _tensor_tables, (device, *(a for row in addresses for a in row), *numels), tensor_table
    )
    chunks = _cached(_chunk_tables, (device, chunk, *numels), chunk_table)
    return tensors, chunks, aligned


def launch_arguments(
    device: torch.device,
    lr: float | Tensor,
    beta1: float,
    beta2: float,
    eps: float,
    weight_decay: float,
    decoupled_weight_decay: bool,
    amsgrad: bool,
    maximize: bool,
) -> tuple[list[Any], dict[str, bool]]:
    """(scalar arguments, flags) as both Adam kernels take them: ``lr_ptr, lr, beta1, beta2,
    eps, weight_decay`` (a tensor lr on `device` is read in the kernel), and the
    compile-time switches."""
    lr_is_tensor = isinstance(lr, Tensor) and lr.device == device
    scalars = [
        lr if lr_is_tensor else None,
        0.0 if lr_is_tensor else float(lr),
        float(beta1),
        float(beta2),
        float(eps),
        float(weight_decay),
    ]
    flags = {
        "LR_IS_TENSOR": lr_is_tensor,
        "MAXIMIZE": maximize,
        "HAS_WEIGHT_DECAY": weight_decay != 0,
        "DECOUPLED": decoupled_weight_decay,
        "AMSGRAD": amsgrad,
    }
    return scalars, flags


def _check_group(param: Tensor, grad: Tensor, exp_avg: Tensor, step: Tensor) -> None:
    if param.dtype not in _TL_DTYPES or exp_avg.dtype not in _TL_DTYPES:
        raise ValueError(
            "fused Adam on CUDA (Triton) supports float32, bfloat16 and float16 params and "
            f"state, got param {param.dtype}, state {exp_avg.dtype}"
        )
    if grad.dtype != param.dtype:
        raise ValueError(f"grad dtype {grad.dtype} differs from param dtype {param.dtype}")
    if step.device != param.device or step.dtype != torch.float32:
        raise ValueError(
            "fused Adam reads `step` in the kernel: it must be a float32 tensor on the "
            f"param's device ({param.device}), got {step.dtype} on {step.device}"
        )


def adam_triton(
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
    block: int = BLOCK,
    chunk: int = CHUNK,
) -> None:
    """One fused Adam step (see the module docstring) over parallel lists.

    Params, grads and steps (float32, on the params' device) are updated in place; the state
    may be stored in the param dtype or in bf16. `lr` may be a float or a 0-dim tensor on the
    params' device (read in the kernel, so a CUDA graph sees later changes); betas are read as
    floats. The tensors are normally CUDA tensors; under ``TRITON_INTERPRET=1`` CPU tensors
    work too, which is how the tests check the kernel without a GPU.
    """
    if not HAS_TRITON:
        raise RuntimeError("fused Adam on CUDA needs Triton, which is not installed")
    if not params:
        return
    if chunk % block != 0:
        raise ValueError(f"chunk ({chunk}) must be a multiple of block ({block})")

    maxes = max_exp_avg_sqs if amsgrad else exp_avg_sqs
    groups: dict[tuple, list[tuple[Tensor, ...]]] = {}
    for row in zip(params, grads, exp_avgs, exp_avg_sqs, maxes, state_steps, strict=True):
        param, grad, exp_avg = row[0], row[1], row[2]
        _check_group(param, grad, exp_avg, row[5])
        if param.numel() == 0:
            continue
        real = [torch.view_as_real(t) if torch.is_complex(t) else t for t in row[:5]]
        if real[1].stride() != real[0].stride():
            # A grad laid out unlike its param (rare): a copy in the param's layout.
            real[1] = torch.empty_like(real[0]).copy_(real[1])
        # The kernel walks each tensor from its first address in memory order.
        if flat_views(*real) is None:
            raise ValueError(
                "fused Adam on CUDA needs each param and its state to share one dense "
                f"layout; got strides {[t.stride() for t in real]}"
            )
        key = (param.device, real[0].dtype, real[2].dtype)
        groups.setdefault(key, []).append((*real, row[5]))

    torch._foreach_add_(state_steps, 1)
    for (device, p_dtype, s_dtype), rows in groups.items():
        tensors, chunks, aligned = _tables_for(rows, device, chunk)
        scalars, flags = launch_arguments(
            device, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize
        )
        _adam_kernel[(chunks.shape[0],)](
            tensors,
            chunks,
            *scalars,
            P_DTYPE=_TL_DTYPES[p_dtype],
            S_DTYPE=_TL_DTYPES[s_dtype],
            ALIGNED=aligned,
            CHUNK=chunk,
            BLOCK=block,
            **flags,
        )
