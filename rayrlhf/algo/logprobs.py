"""Per-token log-probabilities and entropies from language-model logits."""

from __future__ import annotations

import torch


def token_logprobs(logits: torch.Tensor, input_ids: torch.Tensor) -> torch.Tensor:
    """Log-probability the model assigns to each next token.

    ``out[:, t] = log_softmax(logits[:, t])[input_ids[:, t + 1]]``: position ``t`` predicts
    token ``t + 1``. Computed as ``logits[target] - logsumexp(logits)`` rather than by
    gathering from a full log-softmax, which would keep a second (B, T, V) tensor for backward.

    Args:
        logits: Model outputs. Shape: (B, T, V).
        input_ids: Token ids the logits were computed on. Shape: (B, T).

    Returns:
        Log-probabilities of tokens ``input_ids[:, 1:]``. Shape: (B, T - 1).
    """
    logits = logits[:, :-1].float()  # (B, T-1, V)
    targets = input_ids[:, 1:].unsqueeze(-1)  # (B, T-1, 1)
    # log p(y) = z_y - log sum_v exp(z_v)
    target_logits = torch.gather(logits, dim=-1, index=targets).squeeze(-1)
    return target_logits - torch.logsumexp(logits, dim=-1)


def entropy_from_logits(logits: torch.Tensor) -> torch.Tensor:
    """Entropy of the categorical distribution at each position.

    H = -sum_v p_v log p_v = logsumexp(z) - sum_v p_v z_v.

    Args:
        logits: Model outputs. Shape: (B, T, V).

    Returns:
        Entropy in nats. Shape: (B, T).
    """
    logits = logits.float()
    probs = torch.softmax(logits, dim=-1)
    return torch.logsumexp(logits, dim=-1) - (probs * logits).sum(dim=-1)
