"""Memory-order 1-D views, so fused kernels can treat any dense tensor as a flat array."""

from __future__ import annotations

from torch import Tensor

__all__ = ["flat_view", "flat_views"]


def flat_view(t: Tensor) -> Tensor | None:
    """`t`'s elements as a 1-D view in memory order, or None if `t` has gaps or overlaps.

    Contiguous and channels-last tensors (any permutation of a dense layout) qualify; a
    slice with a stride step does not.
    """
    if t.is_contiguous():
        return t.view(-1)
    expected = 1
    for size, stride in sorted(zip(t.shape, t.stride(), strict=True), key=lambda d: d[1]):
        if size == 1:
            continue
        if stride != expected:
            return None
        expected *= size
    return t.as_strided((t.numel(),), (1,))


def flat_views(*tensors: Tensor) -> list[Tensor] | None:
    """1-D views of tensors that share one dense layout, so element i is the same
    coordinate in each; None if they do not (an elementwise update must then go N-D)."""
    stride = tensors[0].stride()
    if any(t.stride() != stride or t.shape != tensors[0].shape for t in tensors[1:]):
        return None
    views = [flat_view(t) for t in tensors]
    return None if any(v is None for v in views) else views
