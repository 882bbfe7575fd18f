"""Reductions over the entries selected by a mask.

Masks are float or bool tensors broadcastable to ``x``; 1 (True) marks an entry that counts,
typically a response token. Padding and prompt tokens carry 0 and never influence a result.
"""

from __future__ import annotations

import torch


def masked_sum(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Sum of ``x`` over the entries where ``mask`` is 1.

    Args:
        x: Values. Shape: (B, T) or any shape.
        mask: 1 on entries to include. Same shape as ``x`` (or broadcastable).
        dim: Dimension to reduce; ``None`` reduces over all entries.

    Returns:
        Scalar if ``dim`` is None, otherwise ``x`` reduced along ``dim``.
    """
    mask = mask.to(x.dtype)
    # where() rather than a plain product: padding may hold inf/NaN (e.g. -inf logprobs), and
    # inf * 0 would be NaN.
    total = torch.where(mask != 0, x * mask, torch.zeros_like(x))
    return total.sum() if dim is None else total.sum(dim=dim)


def masked_mean(x: torch.Tensor, mask: torch.Tensor, dim: int | None = None) -> torch.Tensor:
    """Mean of ``x`` over the entries where ``mask`` is 1.

    A reduction with no masked entries returns 0 rather than NaN (the denominator is clamped to
    1), so an all-padding row contributes nothing.

    Args:
        x: Values. Shape: (B, T) or any shape.
        mask: 1 on entries to include. Same shape as ``x`` (or broadcastable).
        dim: Dimension to reduce; ``None`` reduces over all entries.

    Returns:
        Scalar if ``dim`` is None, otherwise ``x`` averaged along ``dim``.
    """
    mask = mask.to(x.dtype)
    count = mask.expand_as(x).sum() if dim is None else mask.expand_as(x).sum(dim=dim)
    return masked_sum(x, mask, dim) / count.clamp(min=1.0)


def masked_var(x: torch.Tensor, mask: torch.Tensor, unbiased: bool = True) -> torch.Tensor:
    """Variance of ``x`` over all entries where ``mask`` is 1.

    Args:
        x: Values. Shape: (B, T) or any shape.
        mask: 1 on entries to include. Same shape as ``x``.
        unbiased: Apply Bessel's correction, n / (n - 1).

    Returns:
        Scalar variance.

    Raises:
        ValueError: If ``unbiased`` and fewer than two entries are masked.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    # var = E[(x - mean)^2] over masked entries
    var = masked_mean((x - mean) ** 2, mask)
    if unbiased:
        n = mask.expand_as(x).sum()
        if n < 2:
            raise ValueError(
                f"unbiased masked_var needs at least 2 masked entries, got {int(n.item())}"
            )
        var = var * n / (n - 1)
    return var


def masked_whiten(
    x: torch.Tensor, mask: torch.Tensor, shift_mean: bool = True, eps: float = 1e-8
) -> torch.Tensor:
    """Whiten ``x`` with the mean and variance of its masked entries.

    ``(x - mean) / sqrt(var + eps)``; with ``shift_mean=False`` the mean is added back, so only
    the scale changes. Entries outside the mask are 0 in the output.

    Args:
        x: Values. Shape: (B, T) or any shape.
        mask: 1 on entries to include. Same shape as ``x``.
        shift_mean: If False, keep the original mean.
        eps: Added to the variance for numerical stability.

    Returns:
        Whitened values. Shape: same as ``x``.
    """
    mask = mask.to(x.dtype)
    mean = masked_mean(x, mask)
    var = masked_var(x, mask, unbiased=bool(mask.sum() >= 2))
    whitened = (x - mean) * torch.rsqrt(var + eps)
    if not shift_mean:
        whitened = whitened + mean
    return torch.where(mask != 0, whitened, torch.zeros_like(whitened))
