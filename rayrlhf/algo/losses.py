"""Losses for the RLHF stages: SFT, reward modelling, PPO (policy and value) and DPO.

Token-level losses take ``num_tokens``: ``None`` gives the mean over this batch's masked
tokens; an integer N gives the masked sum divided by N. With N set to the token count of the
global batch, the losses of data-parallel shards add up to the loss of the whole batch, so
all-reducing gradients by sum reproduces single-process training exactly. ``num_pairs`` does the
same for pair-level losses. Stats are detached scalar tensors averaged over this shard.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.algo.masked import masked_mean, masked_sum


def _reduce(x: torch.Tensor, mask: torch.Tensor, num_tokens: int | float | None) -> torch.Tensor:
    """Masked mean of ``x``, or masked sum divided by ``num_tokens`` when it is given."""
    if num_tokens is None:
        return masked_mean(x, mask)
    return masked_sum(x, mask) / num_tokens


def sft_loss(
    logits: torch.Tensor,
    input_ids: torch.Tensor,
    loss_mask: torch.Tensor,
    num_tokens: int | float | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Next-token negative log-likelihood on the target tokens.

    The prediction of ``input_ids[:, t + 1]`` (made at position ``t``) is weighted by
    ``loss_mask[:, t + 1]``; ``loss_mask[:, 0]`` is ignored since nothing predicts token 0.

    Args:
        logits: Model outputs. Shape: (B, T, V).
        input_ids: Prompt and response tokens. Shape: (B, T).
        loss_mask: 1 on target tokens (usually response tokens), aligned with ``input_ids``.
            Shape: (B, T).
        num_tokens: If given, divide the summed NLL by this (the global target-token count).

    Returns:
        ``(loss, n_tokens)``: scalar loss, and the number of target tokens in this batch as a
        0-dim long tensor (sum it across shards to get ``num_tokens``).
    """
    logprobs = token_logprobs(logits, input_ids)  # (B, T-1)
    mask = loss_mask[:, 1:]  # (B, T-1), aligned with the predicted tokens
    loss = _reduce(-logprobs, mask, num_tokens)
    return loss, mask.bool().sum()


def pairwise_reward_loss(
    chosen_rewards: torch.Tensor,
    rejected_rewards: torch.Tensor,
    margin: torch.Tensor | float | None = None,
    num_pairs: int | float | None = None,
    weights: torch.Tensor | None = None,
    p_chosen: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Binary ranking loss of a reward model on preference pairs.

    loss = -log sigmoid(r_c - r_r - m), averaged over pairs (Ouyang et al. 2022 eq. 1;
    Touvron et al. 2023, Llama 2 eq. 2, where m is a per-pair margin from the preference
    rating). ``F.logsigmoid`` keeps it finite for large negative differences. With a soft
    label p (the probability that the chosen response is better: an AI judge's, RLAIF, Lee
    et al. 2023; or the share of annotators who chose it), the Bradley-Terry cross-entropy
    loss = -p log sigmoid(r_c - r_r - m) - (1 - p) log sigmoid(r_r - r_c - m); p = 1 is the hard loss.

    Args:
        chosen_rewards: Scores of the preferred responses. Shape: (B,).
        rejected_rewards: Scores of the other responses. Shape: (B,).
        margin: Per-pair margin m. Shape: (B,) or a float; ``None`` means 0.
        num_pairs: If given, divide the summed loss by this (the global pair count; with
            ``weights``, the global count of what the weights sum to one over).
        weights: Per-pair weights. Shape: (B,). The C(K,2) pairs of one ranked list of K
            responses each weigh 1 / C(K,2), so every list counts once (Ouyang et al. 2022,
            Sec. 3.5: all pairs of a ranking as one batch element). ``None`` means 1.
        p_chosen: Per-pair soft label in [0, 1]. Shape: (B,). ``None`` means 1.

    Returns:
        ``(loss, stats)`` with stats ``accuracy`` (fraction with r_c > r_r), ``chosen_mean``,
        ``rejected_mean`` and ``margin_mean`` (mean of r_c - r_r).
    """
    diff = chosen_rewards - rejected_rewards  # (B,)
    m = 0.0 if margin is None else margin
    losses = -F.logsigmoid(diff - m)
    if p_chosen is not None:
        losses = p_chosen * losses - (1.0 - p_chosen) * F.logsigmoid(-diff - m)
    if weights is not None:
        losses = losses * weights
    if num_pairs is None:
        num_pairs = weights.sum() if weights is not None else losses.numel()
    loss = losses.sum() / num_pairs
    with torch.no_grad():
        stats = {
            "accuracy": (diff > 0).float().mean(),
            "chosen_mean": chosen_rewards.float().mean(),
            "rejected_mean": rejected_rewards.float().mean(),
            "margin_mean": diff.float().mean(),
        }
    return loss, stats


def ppo_policy_loss(
    logprobs: torch.Tensor,
    old_logprobs: torch.Tensor,
    advantages: torch.Tensor,
    response_mask: torch.Tensor,
    clip_eps: float = 0.2,
    clip_eps_high: float | None = None,
    dual_clip: float | None = None,
    num_tokens: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """PPO clipped surrogate objective, per token (Schulman et al. 2017 eq. 7).

    L_t = -min(rho_t A_t, clip(rho_t, 1 - eps, 1 + eps_high) A_t), with
    rho_t = exp(logprobs - old_logprobs). With ``dual_clip = c > 1`` the loss of tokens with
    A_t < 0 is further capped at -c A_t, so a huge ratio cannot produce an unbounded update
    (dual-clip PPO, Ye et al. 2020, "Mastering Complex Control in MOBA Games with Deep RL").

    Args:
        logprobs: Log-probabilities under the current policy (with grad). Shape: (B, T).
        old_logprobs: Log-probabilities under the policy that sampled. Shape: (B, T).
        advantages: Advantage estimates. Shape: (B, T).
        response_mask: 1 on response tokens. Shape: (B, T).
        clip_eps: Lower clip range; ratio is clipped below at 1 - clip_eps.
        clip_eps_high: Upper clip range; defaults to ``clip_eps`` (set higher for DAPO's
            "clip-higher").
        dual_clip: Dual-clip constant c (> 1), or ``None`` to disable.
        num_tokens: If given, divide the summed loss by this (the global response-token count).

    Returns:
        ``(loss, stats)`` with stats ``clipfrac`` (fraction of tokens where the clipped term is
        the one used), ``approx_kl`` (k3 estimate of KL(old || new)) and ``ratio_mean``.
    """
    if clip_eps_high is None:
        clip_eps_high = clip_eps
    if dual_clip is not None and dual_clip <= 1.0:
        raise ValueError(f"dual_clip must be > 1, got {dual_clip}")
    advantages = advantages.detach()
    old_logprobs = old_logprobs.detach()

    # Clamp the log-ratio so that exp cannot overflow on a badly stale sample.
    log_ratio = torch.clamp(logprobs - old_logprobs, min=-20.0, max=20.0)
    ratio = torch.exp(log_ratio)  # rho_t
    unclipped = -advantages * ratio
    clipped = -advantages * torch.clamp(ratio, 1.0 - clip_eps, 1.0 + clip_eps_high)
    # -min(a, b) = max(-a, -b)
    losses = torch.maximum(unclipped, clipped)
    if dual_clip is not None:
        # For A < 0: L = min(max(-rho A, -clip(rho) A), -c A)
        capped = torch.minimum(losses, -advantages * dual_clip)
        losses = torch.where(advantages < 0, capped, losses)
    loss = _reduce(losses, response_mask, num_tokens)

    with torch.no_grad():
        # k3 with samples from the old policy: KL(old || new) ~ (rho - 1) - log rho
        approx_kl = masked_mean(ratio - 1.0 - log_ratio, response_mask)
        stats = {
            "clipfrac": masked_mean((clipped > unclipped).float(), response_mask),
            "approx_kl": approx_kl,
            "ratio_mean": masked_mean(ratio, response_mask),
        }
        if dual_clip is not None:
            dual = (advantages < 0) & (-advantages * dual_clip < torch.maximum(unclipped, clipped))
            stats["dual_clipfrac"] = masked_mean(dual.float(), response_mask)
    return loss, stats


def value_loss(
    values: torch.Tensor,
    old_values: torch.Tensor,
    returns: torch.Tensor,
    response_mask: torch.Tensor,
    clip_range: float | None = None,
    num_tokens: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Squared-error value loss, optionally clipped around the old values.

    L_t = 0.5 * max((V_t - R_t)^2, (clip(V_t, V_old - c, V_old + c) - R_t)^2), the clipped
    value objective of OpenAI baselines' PPO2 (Engstrom et al. 2020 discuss its effect).

    Args:
        values: Current value predictions (with grad). Shape: (B, T).
        old_values: Value predictions at rollout time. Shape: (B, T).
        returns: Value targets. Shape: (B, T).
        response_mask: 1 on response tokens. Shape: (B, T).
        clip_range: Clip half-width c, or ``None`` for the plain squared error.
        num_tokens: If given, divide the summed loss by this (the global response-token count).

    Returns:
        ``(loss, stats)`` with stats ``vf_clipfrac`` (fraction of tokens where the clipped
        error is the larger one) and ``values_mean``.
    """
    returns = returns.detach()
    unclipped = (values - returns) ** 2
    if clip_range is None:
        losses = 0.5 * unclipped
        clip_active = torch.zeros_like(unclipped, dtype=torch.bool)
    else:
        old_values = old_values.detach()
        # V_clip = V_old + clip(V - V_old, -c, c)
        values_clipped = old_values + torch.clamp(values - old_values, -clip_range, clip_range)
        clipped = (values_clipped - returns) ** 2
        losses = 0.5 * torch.maximum(unclipped, clipped)
        clip_active = clipped > unclipped
    loss = _reduce(losses, response_mask, num_tokens)
    with torch.no_grad():
        stats = {
            "vf_clipfrac": masked_mean(clip_active.float(), response_mask),
            "values_mean": masked_mean(values.detach(), response_mask),
        }
    return loss, stats


def dpo_loss(
    policy_chosen_logps: torch.Tensor,
    policy_rejected_logps: torch.Tensor,
    ref_chosen_logps: torch.Tensor,
    ref_rejected_logps: torch.Tensor,
    beta: float = 0.1,
    label_smoothing: float | torch.Tensor = 0.0,
    num_pairs: int | None = None,
    loss_type: str = "sigmoid",
    margin: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """Direct Preference Optimization loss (Rafailov et al. 2023 eq. 7).

    h = beta * [(log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l))]
    loss = -(1 - ls) * log sigmoid(h) - ls * log sigmoid(-h)
    ``label_smoothing`` ls > 0 is conservative DPO (Mitchell 2023, "A note on DPO with noisy
    preferences"): preferences are assumed flipped with probability ls.
    ``loss_type="ipo"`` (Azar et al. 2023 eq. 17): loss = (u - 1 / (2 * beta))^2 with
    u = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)).
    ``margin`` m (Llama 2-style, from the preference data) is subtracted inside:
    sigmoid: h - m; ipo: (u - m - 1 / (2 * beta))^2.

    Args:
        policy_chosen_logps: Sequence log-probabilities of chosen responses. Shape: (B,).
        policy_rejected_logps: Same for rejected responses. Shape: (B,).
        ref_chosen_logps: Reference-model log-probabilities of chosen responses. Shape: (B,).
        ref_rejected_logps: Same for rejected responses. Shape: (B,).
        beta: Strength of the implicit KL constraint.
        label_smoothing: Assumed probability in [0, 0.5) that a label is flipped, or one per
            pair (Shape: (B,)): 1 - p for a soft label p of the chosen side.
        num_pairs: If given, divide the summed loss by this (the global pair count).
        loss_type: ``sigmoid`` (DPO, cDPO with label_smoothing) or ``ipo``.
        margin: Per-pair margin, or None for none. Shape: (B,).
        weights: Per-pair weight of its loss term, or None for 1. Shape: (B,).

    Returns:
        ``(loss, stats)`` with stats ``reward_accuracy``, ``reward_margin``,
        ``chosen_reward`` and ``rejected_reward``, where the implicit reward of a response is
        beta * (log pi - log ref).
    """
    chosen_logratios = policy_chosen_logps - ref_chosen_logps  # (B,)
    rejected_logratios = policy_rejected_logps - ref_rejected_logps  # (B,)
    u = chosen_logratios - rejected_logratios
    m = 0.0 if margin is None else margin
    if loss_type == "ipo":
        losses = (u - m - 1.0 / (2.0 * beta)) ** 2
    elif loss_type == "sigmoid":
        h = beta * u - m
        losses = -(1.0 - label_smoothing) * F.logsigmoid(h) - label_smoothing * F.logsigmoid(-h)
    else:
        raise ValueError(f"loss_type {loss_type!r}: expected sigmoid or ipo")
    if weights is not None:
        losses = losses * weights
    loss = losses.mean() if num_pairs is None else losses.sum() / num_pairs
    with torch.no_grad():
        chosen_rewards = beta * chosen_logratios.float()
        rejected_rewards = beta * rejected_logratios.float()
        stats = {
            "reward_accuracy": (chosen_rewards > rejected_rewards).float().mean(),
            "reward_margin": (chosen_rewards - rejected_rewards).mean(),
            "chosen_reward": chosen_rewards.mean(),
            "rejected_reward": rejected_rewards.mean(),
        }
    return loss, stats


def rrhf_loss(
    token_logps: torch.Tensor,
    mask: torch.Tensor,
    better: torch.Tensor,
    worse: torch.Tensor,
    best: torch.Tensor,
    rank_weight: float = 1.0,
    sft_weight: float = 1.0,
    length_penalty: float = 1.0,
    num_lists: int | float | None = None,
) -> tuple[torch.Tensor, dict[str, torch.Tensor]]:
    """RRHF: Rank Responses to align language models with Human Feedback (Yuan et al. 2023).

    Each response i is scored by its length-normalised log-probability
    p_i = sum_t log pi(y_i,t) / |y_i|^length_penalty. The loss of one ranked list is
    rank_weight * sum over its pairs (b better than w) of max(0, p_w - p_b) (eq. 2) plus
    sft_weight * -(1 / |y_best|) sum_t log pi(y_best,t) (eq. 3: fine-tuning on the best).

    Args:
        token_logps: Log-probability of every response token. Shape: (S, T).
        mask: 1 on response tokens. Shape: (S, T).
        better, worse: Rows of the better and the worse response of every pair. Shape: (P,).
        best: Row of the best response of every list. Shape: (L,).
        num_lists: If given, divide the summed loss by this (the global list count); else by L.

    Returns:
        ``(loss, stats)`` with per-batch sums ``rank_sum``, ``sft_sum``, ``correct`` (pairs
        with p_b > p_w) and the scores ``p`` (Shape: (S,)).
    """
    mask = mask.to(token_logps.dtype)
    length = mask.sum(-1).clamp(min=1.0)
    p = (token_logps * mask).sum(-1) / length ** length_penalty  # (S,)
    hinge = torch.relu(p[worse] - p[better])  # (P,)
    nll_best = -(token_logps[best] * mask[best]).sum(-1) / length[best]  # (L,)
    total = rank_weight * hinge.sum() + sft_weight * nll_best.sum()
    loss = total / (best.numel() if num_lists is None else num_lists)
    with torch.no_grad():
        stats = {"rank_sum": hinge.sum(), "sft_sum": nll_best.sum(),
                 "correct": (p[better] > p[worse]).float().sum(), "p": p.detach()}
    return loss, stats


def ranked_list_pairs(scores: torch.Tensor, keep: torch.Tensor | None = None
                      ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The (better, worse) pairs and the best response of lists ranked by a score, as flat row
    indices (row ``l * K + i`` is response i of list l), for ``rrhf_loss``.

    Every two responses of a list with different scores make a pair, the higher one better;
    equal scores make no pair. The best is the highest score, the lower index on a tie (the
    rule of ``select_best_of_k``).

    Args:
        scores: Score of every response. Shape: (L, K).
        keep: Lists to use (False: a list left out, e.g. a rank's padding). Shape: (L,).

    Returns:
        ``(better, worse, best)``; better and worse Shape: (P,), best Shape: (L_kept,).
    """
    L, K = scores.shape
    keep = torch.ones(L, dtype=torch.bool) if keep is None else keep.bool().cpu()
    s = scores.detach().cpu()
    i, j = torch.triu_indices(K, K, offset=1)  # every unordered pair once
    si, sj = s[:, i], s[:, j]  # (L, C)
    rows = torch.arange(L).unsqueeze(1) * K
    valid = (si != sj) & keep.unsqueeze(1)
    better = torch.where(si > sj, rows + i, rows + j)[valid]
    worse = torch.where(si > sj, rows + j, rows + i)[valid]
    top = torch.sort(-s, dim=1, stable=True).indices[:, 0]
    best = (torch.arange(L) * K + top)[keep]
    return better, worse, best
