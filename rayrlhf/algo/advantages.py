"""Advantage estimators: GAE for PPO; group baselines (GRPO, Dr. GRPO, RLOO) and REINFORCE++ returns
for critic-free RL."""

from __future__ import annotations

import torch

from rayrlhf.algo.masked import masked_whiten


@torch.no_grad()
def gae(
    rewards: torch.Tensor,
    values: torch.Tensor,
    response_mask: torch.Tensor,
    gamma: float = 1.0,
    lam: float = 0.95,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Generalized Advantage Estimation (Schulman et al. 2016, eq. 16).

    Runs backwards over the tokens where ``response_mask`` is 1, skipping the others: the
    value after the last response token is 0 (the episode ends there), so nothing leaks in from
    right padding, and masked gaps inside a sequence (e.g. tool output in a multi-turn rollout)
    are stepped over rather than cutting the episode.

    Args:
        rewards: Per-token rewards, e.g. -beta * KL on every response token plus the score on
            the last one. Shape: (B, T).
        values: Value predictions V(s_t). Shape: (B, T).
        response_mask: 1 on response tokens. Shape: (B, T).
        gamma: Discount factor.
        lam: GAE lambda; 1 gives Monte-Carlo returns minus values, 0 gives one-step TD.

    Returns:
        ``(advantages, returns)``, each Shape: (B, T), 0 outside the mask, with
        returns = advantages + values. Computed without grad.
    """
    mask = response_mask.bool()
    zeros = torch.zeros_like(values[:, 0])
    next_value = zeros  # V(s_{t+1}) of the next response token; 0 past the end
    next_advantage = zeros  # A_{t+1}
    advantages = torch.zeros_like(values)
    for t in reversed(range(values.shape[1])):
        m = mask[:, t]
        # delta_t = r_t + gamma * V(s_{t+1}) - V(s_t)
        delta = rewards[:, t] + gamma * next_value - values[:, t]
        # A_t = delta_t + gamma * lam * A_{t+1}
        advantage = delta + gamma * lam * next_advantage
        advantages[:, t] = torch.where(m, advantage, zeros)
        # Masked positions pass the running quantities through unchanged.
        next_value = torch.where(m, values[:, t], next_value)
        next_advantage = torch.where(m, advantage, next_advantage)
    returns = torch.where(mask, advantages + values, torch.zeros_like(values))
    return advantages, returns


def whiten_advantages(
    advantages: torch.Tensor, response_mask: torch.Tensor, shift_mean: bool = True
) -> torch.Tensor:
    """Normalise advantages to zero mean and unit variance over response tokens.

    Args:
        advantages: Shape: (B, T).
        response_mask: 1 on response tokens. Shape: (B, T).
        shift_mean: If False, only rescale.

    Returns:
        Whitened advantages, 0 outside the mask. Shape: (B, T).
    """
    return masked_whiten(advantages, response_mask, shift_mean=shift_mean)


def group_normalized_advantages(
    scores: torch.Tensor, group_size: int, eps: float = 1e-6
) -> torch.Tensor:
    """Outcome advantages normalised within each prompt's group of samples (GRPO).

    A_i = (r_i - mean(r_group)) / (std(r_group) + eps) (Shao et al. 2024, DeepSeekMath,
    section 4.1.2), with the sample standard deviation. Groups are consecutive: samples
    ``[g * group_size, (g + 1) * group_size)`` share a prompt. A group of one gets 0.

    Args:
        scores: One scalar reward per sample. Shape: (N * group_size,) or (N, group_size).
        group_size: Number of samples per prompt.
        eps: Added to the standard deviation so that a group of equal scores gives 0.

    Returns:
        Per-sample advantages, same shape as ``scores``; broadcast over a response's tokens
        with ``advantages[:, None] * response_mask``.
    """
    if scores.numel() % group_size != 0:
        raise ValueError(
            f"{scores.numel()} scores do not split into groups of group_size={group_size}"
        )
    grouped = scores.detach().float().reshape(-1, group_size)  # (N, G)
    mean = grouped.mean(dim=1, keepdim=True)
    if group_size == 1:
        std = torch.zeros_like(mean)
    else:
        std = grouped.std(dim=1, keepdim=True)
    normalized = (grouped - mean) / (std + eps)
    out_dtype = scores.dtype if scores.is_floating_point() else torch.float32
    return normalized.reshape(scores.shape).to(out_dtype)


def leave_one_out_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """RLOO outcome advantages: each sample's score minus the mean of the other samples of its
    prompt (Ahmadian et al. 2024, eq. 6), A_i = r_i - 1/(G-1) sum_{j != i} r_j.

    Groups are consecutive, as in ``group_normalized_advantages``.

    Args:
        scores: One scalar reward per sample. Shape: (N * group_size,).
        group_size: Samples per prompt, at least 2.

    Returns:
        Per-sample advantages. Shape: (N * group_size,).
    """
    if group_size < 2:
        raise ValueError(f"leave-one-out needs at least 2 samples per prompt, got group_size={group_size}")
    if scores.numel() % group_size != 0:
        raise ValueError(f"{scores.numel()} scores do not split into groups of group_size={group_size}")
    grouped = scores.detach().float().reshape(-1, group_size)  # (N, G)
    others = (grouped.sum(dim=1, keepdim=True) - grouped) / (group_size - 1)
    return (grouped - others).reshape(scores.shape)


def group_centered_advantages(scores: torch.Tensor, group_size: int) -> torch.Tensor:
    """Dr. GRPO outcome advantages: the score minus its group's mean, with no division by the
    group's standard deviation (Liu et al. 2025, "Understanding R1-Zero-like training", sec. 3.1).

    Shapes: scores (N * group_size,) -> (N * group_size,).
    """
    if scores.numel() % group_size != 0:
        raise ValueError(f"{scores.numel()} scores do not split into groups of group_size={group_size}")
    grouped = scores.detach().float().reshape(-1, group_size)  # (N, G)
    return (grouped - grouped.mean(dim=1, keepdim=True)).reshape(scores.shape)


@torch.no_grad()
def reinforce_pp_returns(rewards: torch.Tensor, response_mask: torch.Tensor, gamma: float = 1.0) -> torch.Tensor:
    """REINFORCE++ returns (Hu 2025): G_t = sum_{s >= t} gamma^(s - t) r_s over response tokens,
    with no critic; the caller whitens them over the batch to get the advantages.

    Args:
        rewards: Per-token rewards, -beta * KL_t on every response token plus the score on the
            last one. Shape: (B, T).
        response_mask: 1 on response tokens; masked positions are stepped over. Shape: (B, T).
        gamma: Discount.

    Returns:
        Returns, 0 outside the mask. Shape: (B, T).
    """
    mask = response_mask.bool()
    running = torch.zeros_like(rewards[:, 0])
    out = torch.zeros_like(rewards)
    for t in reversed(range(rewards.shape[1])):
        # G_t = r_t + gamma * G_{t+1}
        g = rewards[:, t] + gamma * running
        out[:, t] = torch.where(mask[:, t], g, torch.zeros_like(g))
        running = torch.where(mask[:, t], g, running)
    return out
