"""Fused Adam/AdamW with int8 state for CUDA in Triton: decode, update and encode in one pass.

The state is `optim.lowmem`'s int8 layout: per moment, uint8 codes laid out like the param
and one fp32 ``absmax`` per block of `optim.quant.BLOCK_SIZE` elements in memory order;
``exp_avg`` in the signed dynamic code, ``exp_avg_sq`` (and ``max_exp_avg_sq``) as the
codes of its square root in the unsigned one. Each program takes `ROWS` whole blocks as a
``(ROWS, BLOCK_SIZE)`` tile, so per element it reads param, grad and two codes and writes
param and two codes (12 bytes for fp32 params, 8 for bf16), plus 8 bytes of scales per
block::

    m, r     <- code[codes] * absmax        (per block)
    v        <- r^2
    p, m, v  <- optim.triton_adam.adam_math(p, g, m, v)
    absmax   <- max |m| (resp. sqrt(v)) over the block
    codes    <- index of the nearest code value to m / absmax (resp. sqrt(v) / absmax)

The nearest code is found as `torch.bucketize` finds it against the midpoints between
neighbouring code values (the count of midpoints below the value): a branch-free binary
search, 8 loads from a 255-entry table that stays in L1.

As in `optim.triton_adam`, one launch covers a group's quantised tensors through its tensor
table (numel, then the addresses of param, grad, codes and scales of each moment, step)
and chunk table (a chunk being `ROWS` blocks), and ``step`` and a tensor ``lr`` are read on
the device (CUDA-graph capturable). Tensors too small to be quantised keep fp32 moments and go to
`optim.triton_adam.adam_triton`. Under ``TRITON_INTERPRET=1`` the kernel runs on CPU
tensors: that is how the tests check it against the eager int8 path.
"""

from __future__ import annotations

import functools

import torch
from torch import Tensor

from optim import triton_adam
from optim.layout import flat_views
from optim.lowmem import _code
from optim.quant import BLOCK_SIZE, Quantized
from optim.triton_adam import HAS_TRITON

if HAS_TRITON:
    import triton
    import triton.language as tl

    from optim.triton_adam import _TL_DTYPES, _round_to_bf16, adam_math, step_scalars

__all__ = ["ROWS", "adam8_triton"]

ROWS = 4  # quantisation blocks per program: 1024 elements. Not tuned on a GPU yet.

if HAS_TRITON:

    @triton.jit
    def _encode(x, midpoints):
        """Per element, the number of the 255 sorted `midpoints` below `x` (0..255)."""
        index = tl.full(x.shape, 0, tl.int32)  # not tl.zeros: see _quantize
        for level in tl.static_range(8):
            candidate = index + (128 >> level)
            index = tl.where(tl.load(midpoints + candidate - 1) < x, candidate, index)
        return index

    @triton.jit
    def _maximum(a, b):
        return tl.maximum(a, b)

    @triton.jit
    def _quantize(x, mask, codes_ptrs, absmax_ptrs, row_mask, midpoints):
        """Store `x` (a tile of whole blocks, one per row) as codes and per-row scales."""
        # tl.reduce with our own combine rather than tl.max: tl.max (like tl.zeros) is a jit
        # function of
        # Triton's library, defined when Triton was imported, which the tests' interpreter
        # (switched on after that import) cannot call.
        absmax = tl.reduce(tl.where(mask, tl.abs(x), 0.0), 1, _maximum)
        scale = tl.maximum(absmax, 1.1754943508222875e-38)  # finfo(float32).tiny
        codes = _encode(tl.div_rn(x, scale[:, None]), midpoints)
        tl.store(codes_ptrs, codes.to(tl.uint8), mask=mask)
        tl.store(absmax_ptrs, absmax, mask=row_mask)

    @triton.jit
    def _dequantize(codes_ptrs, absmax_ptrs, mask, row_mask, code):
        codes = tl.load(codes_ptrs, mask=mask, other=0).to(tl.int32)
        absmax = tl.load(absmax_ptrs, mask=row_mask, other=0.0)
        return tl.where(mask, tl.load(code + codes) * absmax[:, None], 0.0)

    @triton.jit
    def _adam8_kernel(
        tensors,
        blocks,
        signed_code,
        signed_midpoints,
        unsigned_code,
        unsigned_midpoints,
        lr_ptr,
        lr,
        beta1,
        beta2,
        eps,
        weight_decay,
        P_DTYPE: tl.constexpr,
        LR_IS_TENSOR: tl.constexpr,
        MAXIMIZE: tl.constexpr,
        HAS_WEIGHT_DECAY: tl.constexpr,
        DECOUPLED: tl.constexpr,
        AMSGRAD: tl.constexpr,
        ROWS: tl.constexpr,
        QBLOCK: tl.constexpr,
    ):
        pid = tl.program_id(0)
        row = tl.load(blocks + 2 * pid)
        first = tl.load(blocks + 2 * pid + 1) * ROWS  # index of the program's first block
        entry = tensors + row * 10  # numel, 9 addresses: see adam8_triton
        numel = tl.load(entry)
        p_ptr = tl.load(entry + 1).to(tl.pointer_type(P_DTYPE))
        g_ptr = tl.load(entry + 2).to(tl.pointer_type(P_DTYPE))
        m_ptr = tl.load(entry + 3).to(tl.pointer_type(tl.uint8))
        m_absmax = tl.load(entry + 4).to(tl.pointer_type(tl.float32))
        r_ptr = tl.load(entry + 5).to(tl.pointer_type(tl.uint8))
        r_absmax = tl.load(entry + 6).to(tl.pointer_type(tl.float32))
        rmax_ptr = tl.load(entry + 7).to(tl.pointer_type(tl.uint8))
        rmax_absmax = tl.load(entry + 8).to(tl.pointer_type(tl.float32))
        step_ptr = tl.load(entry + 9).to(tl.pointer_type(tl.float32))
        lr, step_size, bias_correction2_sqrt = step_scalars(
            step_ptr, lr_ptr, lr, beta1, beta2, LR_IS_TENSOR
        )

        block = first + tl.arange(0, ROWS)
        offs = block[:, None] * QBLOCK + tl.arange(0, QBLOCK)[None, :]
        mask = offs < numel
        row_mask = block * QBLOCK < numel

        p = tl.load(p_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        g = tl.load(g_ptr + offs, mask=mask, other=0.0).to(tl.float32)
        m = _dequantize(m_ptr + offs, m_absmax + block, mask, row_mask, signed_code)
        r = _dequantize(r_ptr + offs, r_absmax + block, mask, row_mask, unsigned_code)
        v = r * r
        if AMSGRAD:
            rmax = _dequantize(rmax_ptr + offs, rmax_absmax + block, mask, row_mask, unsigned_code)
            vmax = rmax * rmax
        else:
            vmax = v
        p, m, v, vmax = adam_math(
            p, g, m, v, vmax, lr, beta1, beta2, eps, weight_decay, step_size,
            bias_correction2_sqrt, MAXIMIZE, HAS_WEIGHT_DECAY, DECOUPLED, AMSGRAD,
        )  # fmt: skip
        if P_DTYPE.is_bf16():
            tl.store(p_ptr + offs, _round_to_bf16(p), mask=mask)
        else:
            tl.store(p_ptr + offs, p.to(P_DTYPE), mask=mask)
        _quantize(m, mask, m_ptr + offs, m_absmax + block, row_mask, signed_midpoints)
        _quantize(tl.sqrt_rn(v), mask, r_ptr + offs, r_absmax + block, row_mask, unsigned_midpoints)
        if AMSGRAD:
            _quantize(
                tl.sqrt_rn(vmax), mask, rmax_ptr + offs, rmax_absmax + block, row_mask,
                unsigned_midpoints,
            )  # fmt: skip


@functools.cache
def _tables(device: torch.device) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(signed code, its midpoints, unsigned code, its midpoints) on `device`."""
    signed, unsigned = _code(False, device), _code(True, device)
    return (
        signed,
        (signed[1:] + signed[:-1]) / 2,
        unsigned,
        (unsigned[1:] + unsigned[:-1]) / 2,
    )


def adam8_triton(
    params: list[Tensor],
    grads: list[Tensor],
    exp_avgs: list[Quantized | Tensor],
    exp_avg_sqs: list[Quantized | Tensor],
    max_exp_avg_sqs: list[Quantized | Tensor],
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
    """One fused Adam step over parallel lists whose moments are `Quantized` (int8) or, for
    small tensors, plain fp32 tensors (those go to `optim.triton_adam.adam_triton`).

    Same contract as `optim.triton_adam.adam_triton`: params, codes, scales and steps are
    updated in place; steps are float32 tensors on the params' device.
    """
    if not HAS_TRITON:
        raise RuntimeError("fused Adam on CUDA needs Triton, which is not installed")
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
    maxes = max_exp_avg_sqs if amsgrad else exp_avg_sqs
    groups: dict[tuple, list[tuple[Tensor, ...]]] = {}
    steps = []
    for i, m in enumerate(exp_avgs):
        if not isinstance(m, Quantized):
            continue
        param, grad, step = params[i], grads[i], state_steps[i]
        triton_adam._check_group(param, grad, param, step)
        real = torch.view_as_real(param) if param.is_complex() else param
        grad = torch.view_as_real(grad) if grad.is_complex() else grad
        if grad.stride() != real.stride():
            grad = torch.empty_like(real).copy_(grad)
        v, vmax = exp_avg_sqs[i], maxes[i]
        if flat_views(real, grad, m.codes, v.codes, vmax.codes) is None:
            raise ValueError(
                "fused int8 Adam on CUDA needs each param and its codes to share one dense "
                f"layout; got strides {[t.stride() for t in (real, grad, m.codes)]}"
            )
        row = (real, grad, m.codes, m.absmax, v.codes, v.absmax, vmax.codes, vmax.absmax, step)
        groups.setdefault((param.device, real.dtype), []).append(row)
        steps.append(step)

    # Every quantised tensor was checked above, so a bad one fails before anything moves.
    plain = [i for i, m in enumerate(exp_avgs) if not isinstance(m, Quantized)]
    if plain:
        pick = [[values[i] for i in plain] for values in (params, grads, exp_avgs, exp_avg_sqs)]
        vmax = [max_exp_avg_sqs[i] for i in plain] if amsgrad else []
        triton_adam.adam_triton(*pick, vmax, [state_steps[i] for i in plain], **hyper)
    if not groups:
        return
    torch._foreach_add_(steps, 1)
    for (device, p_dtype), rows in groups.items():
        # Program i takes chunk c = blocks[i, 1] of its tensor: blocks c*ROWS .. c*ROWS+ROWS-1.
        tensors, blocks, _ = triton_adam._tables_for(rows, device, ROWS * BLOCK_SIZE)
        scalars, flags = triton_adam.launch_arguments(
            device, lr, beta1, beta2, eps, weight_decay, decoupled_weight_decay, amsgrad, maximize
        )
        _adam8_kernel[(blocks.shape[0],)](
            tensors,
            blocks,
            *_tables(device),
            *scalars,
            P_DTYPE=_TL_DTYPES[p_dtype],
            ROWS=ROWS,
            QBLOCK=BLOCK_SIZE,
            **flags,
        )
