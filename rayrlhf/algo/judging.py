"""An AI judge's preference from its next-token log-probabilities, and its position bias.

RLAIF (Lee et al. 2023, Sec. 2.1): the judge reads a pair and an ending string ("Preferred
Answer = "); its label is the probability it gives the token "1" against "2", renormalised
over the two,

    P(first preferred) = exp(lp_1) / (exp(lp_1) + exp(lp_2)) = sigmoid(lp_1 - lp_2).

Judges favour one position (Wang et al. 2023, "Large language models are not fair
evaluators"), so each pair is scored in both orders, (a, b) and (b, a), and the two are averaged:

    P(a preferred) = (P_ab(first) + 1 - P_ba(first)) / 2.

A judge without position bias gives P_ab(first) + P_ba(first) = 1; the mean of
(P_ab(first) + P_ba(first)) / 2 - 0.5 over pairs is the bias toward the first position
(0: none, 0.5: always "1"), which the averaged label no longer has.
"""
from __future__ import annotations

import torch


def first_preferred(logprobs: torch.Tensor) -> torch.Tensor:
    """P(first preferred) from the log-probabilities of the two choice tokens.

    Args:
        logprobs: ``log p("1")`` and ``log p("2")`` of each scored prompt. Shape: (N, 2).

    Returns:
        ``sigmoid(lp_1 - lp_2)``. Shape: (N,).
    """
    return torch.sigmoid(logprobs[:, 0] - logprobs[:, 1])


def choice_mass(logprobs: torch.Tensor) -> torch.Tensor:
    """The probability the judge puts on the two choices at all, ``p("1") + p("2")``: low when
    it would rather say something else (the prompt format confuses it). Shape: (N, 2) -> (N,)."""
    return logprobs.exp().sum(-1)


def debiased(p_ab: torch.Tensor, p_ba: torch.Tensor) -> torch.Tensor:
    """P(a preferred) averaged over both orders: ``(p_ab + 1 - p_ba) / 2``.

    Args:
        p_ab: P(first preferred) with a shown first. Shape: (N,).
        p_ba: P(first preferred) with b shown first. Shape: (N,).
    """
    return 0.5 * (p_ab + 1.0 - p_ba)


def position_stats(p_ab: torch.Tensor, p_ba: torch.Tensor) -> dict[str, float]:
    """How much the order of the pair sways the judge.

    Returns:
        ``position_bias``: mean of ``(p_ab + p_ba) / 2 - 0.5``, the pull toward the first
        position of a label from one order; ``first_rate``: share of single-order labels that
        pick the first response (0.5 for an unbiased judge on pairs in random order);
        ``consistency``: share of pairs whose hard label is the same in both orders.
    """
    if p_ab.numel() == 0:
        return {"position_bias": float("nan"), "first_rate": float("nan"), "consistency": float("nan")}
    first = torch.cat([p_ab > 0.5, p_ba > 0.5]).float()
    return {"position_bias": float((0.5 * (p_ab + p_ba) - 0.5).mean()),
            "first_rate": float(first.mean()),
            "consistency": float(((p_ab > 0.5) == (p_ba < 0.5)).float().mean())}


def expected_rating(logprobs: torch.Tensor) -> torch.Tensor:
    """A direct rating's reward (d-RLAIF, Lee et al. 2023 Sec. 2.2.2): the expected rating under
    the judge's distribution renormalised over the N rating tokens, worst first, scored
    0, 1 / (N - 1), ..., 1.

    Args:
        logprobs: log p of each rating token. Shape: (B, N).

    Returns:
        ``sum_i softmax(lp)_i * i / (N - 1)``, in [0, 1]. Shape: (B,).
    """
    n = logprobs.shape[-1]
    values = torch.linspace(0.0, 1.0, n, dtype=logprobs.dtype)
    return (torch.softmax(logprobs, -1) * values).sum(-1)
