"""Per-token PPO rewards and the combination of several reward-model scores into one."""

from __future__ import annotations

import torch

from rayrlhf.algo.masked import masked_whiten

COMBINE_METHODS = ("linear", "llama2_gate")
TRANSFORMS = (None, "inverse_sigmoid")


def token_level_rewards(
    scores: torch.Tensor,
    kl: torch.Tensor,
    response_mask: torch.Tensor,
    kl_coef: float | torch.Tensor,
) -> torch.Tensor:
    """Per-token rewards for PPO: a KL penalty on every token, the score on the last one.

    r_t = -beta * KL_t on response tokens, plus the sequence score on the last response
    token of each row (Ziegler et al. 2019, section 2;
    Touvron et al. 2023, Llama 2, section 3.2.3).

    Args:
        scores: One scalar reward per sequence. Shape: (B,).
        kl: Per-token KL estimate, e.g. from ``kl_penalty``. Shape: (B, T).
        response_mask: 1 on response tokens. Shape: (B, T).
        kl_coef: The coefficient beta.

    Returns:
        Rewards, 0 outside the mask; a row with no response tokens gets no score.
        Shape: (B, T).
    """
    mask = response_mask.bool()
    rewards = torch.where(mask, -kl_coef * kl, torch.zeros_like(kl))
    positions = torch.arange(mask.shape[1], device=mask.device).expand_as(mask)
    last = torch.where(mask, positions, -1).max(dim=1).values  # (B,), -1 for empty rows
    has_response = last >= 0
    score_at_last = torch.zeros_like(rewards)
    score_at_last[has_response, last[has_response]] = scores[has_response].to(rewards.dtype)
    return rewards + score_at_last


def combine_linear(scores: dict[str, torch.Tensor], weights: dict[str, float]) -> torch.Tensor:
    """Weighted sum of reward sources: R = sum_k w_k R_k.

    Args:
        scores: Reward source name to scores. Each Shape: (B,).
        weights: Reward source name to weight; every name must be in ``scores``.

    Returns:
        Combined scores. Shape: (B,).
    """
    if not weights:
        raise ValueError("combine_linear needs at least one weight")
    missing = [name for name in weights if name not in scores]
    if missing:
        raise KeyError(
            f"reward weights name source(s) {missing} with no scores; available: {sorted(scores)}"
        )
    return sum(weight * scores[name] for name, weight in weights.items())


def llama2_safety_gate(
    helpful: torch.Tensor,
    safety: torch.Tensor,
    unsafe_prompt: torch.Tensor,
    threshold: float = 0.15,
) -> torch.Tensor:
    """Piecewise combination of helpfulness and safety scores (Llama 2, section 3.2.3).

    R_c = R_s if is_safety(prompt) or R_s < threshold, else R_h.

    Llama 2 applies the 0.15 threshold to a safety reward model whose output is read as a
    probability in [0, 1]; ``safety`` must be on the same scale as ``threshold`` (apply a
    sigmoid first to raw logits, or pick a threshold in logit units).

    Args:
        helpful: Helpfulness reward-model scores R_h. Shape: (B,).
        safety: Safety reward-model scores R_s. Shape: (B,).
        unsafe_prompt: True where the prompt is known to elicit unsafe responses. Shape: (B,).
        threshold: Safety score below which the response is treated as unsafe.

    Returns:
        Combined scores R_c. Shape: (B,).
    """
    use_safety = unsafe_prompt.bool() | (safety < threshold)
    return torch.where(use_safety, safety, helpful)


def inverse_sigmoid(x: torch.Tensor, eps: float = 1e-6) -> torch.Tensor:
    """logit(x) = log(x / (1 - x)), with x clamped to [eps, 1 - eps].

    Llama 2 (section 3.2.3) passes the gated score through the logit before whitening, to
    stretch differences near 0 and 1.

    Args:
        x: Probability-like scores. Shape: any.
        eps: Clamp margin that keeps the result finite.

    Returns:
        Logits. Shape: same as ``x``.
    """
    return torch.logit(x, eps=eps)


def whiten_scores(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Normalise a batch of scores to zero mean and unit variance.

    Args:
        x: Scores. Shape: (B,).
        eps: Added to the variance.

    Returns:
        Whitened scores. Shape: (B,).
    """
    return masked_whiten(x, torch.ones_like(x, dtype=torch.bool), eps=eps)


def combine_rewards(
    scores: dict[str, torch.Tensor],
    method: str = "linear",
    weights: dict[str, float] | None = None,
    helpful_key: str = "helpfulness",
    safety_key: str = "safety",
    unsafe: torch.Tensor | None = None,
    threshold: float = 0.15,
    transform: str | None = None,
    whiten: bool = False,
) -> torch.Tensor:
    """Combine the scores of several reward sources into one score per sample.

    Steps, in order: combine (``method``), then ``transform``, then whiten. Llama 2's recipe
    is ``method="llama2_gate", transform="inverse_sigmoid", whiten=True``.

    Args:
        scores: Reward source name to scores. Each Shape: (B,).
        method: ``"linear"`` (weighted sum; ``weights`` may be omitted when there is one
            source) or ``"llama2_gate"``.
        weights: Weights for ``"linear"``; for ``"llama2_gate"``, weights of further sources
            (rules such as a length penalty) added to the gated score: R_g + sum_k w_k R_k.
        helpful_key: Name of the helpfulness source for ``"llama2_gate"``.
        safety_key: Name of the safety source for ``"llama2_gate"``.
        unsafe: True where the prompt is a safety prompt, Shape: (B,); ``None`` means none is.
        threshold: Safety threshold for ``"llama2_gate"``, on the safety scores' scale.
        transform: ``None`` or ``"inverse_sigmoid"``.
        whiten: Whiten the result over the batch.

    Returns:
        Combined scores. Shape: (B,).
    """
    if method == "linear":
        if weights is None:
            if len(scores) != 1:
                raise ValueError(
                    f"method='linear' with {len(scores)} sources {sorted(scores)} needs weights"
                )
            weights = {next(iter(scores)): 1.0}
        combined = combine_linear(scores, weights)
    elif method == "llama2_gate":
        for key in (helpful_key, safety_key):
            if key not in scores:
                raise KeyError(f"llama2_gate needs source {key!r}; available: {sorted(scores)}")
        helpful, safety = scores[helpful_key], scores[safety_key]
        if unsafe is None:
            unsafe = torch.zeros_like(safety, dtype=torch.bool)
        combined = llama2_safety_gate(helpful, safety, unsafe, threshold=threshold)
        # Any other source (a rule such as a length penalty) is added after the gate, weighted.
        extra = {k: w for k, w in (weights or {}).items() if k not in (helpful_key, safety_key)}
        if extra:
            combined = combined + combine_linear(scores, extra)
    else:
        raise ValueError(f"unknown combine method={method!r}; expected one of {COMBINE_METHODS}")

    if transform == "inverse_sigmoid":
        combined = inverse_sigmoid(combined)
    elif transform is not None:
        raise ValueError(f"unknown transform={transform!r}; expected one of {TRANSFORMS}")
    if whiten:
        combined = whiten_scores(combined)
    return combined
