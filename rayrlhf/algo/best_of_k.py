"""Best-of-K (rejection) sampling: selection, statistics and the best-of-K curve."""

from __future__ import annotations

import math

import torch


def select_best_of_k(rewards: torch.Tensor, k: int, top_m: int = 1) -> torch.Tensor:
    """Indices of the ``top_m`` highest-reward samples among each prompt's ``k``.

    Samples of one prompt are consecutive when ``rewards`` is flat. Ties go to the lower index,
    so the selection is deterministic.

    Args:
        rewards: Scores. Shape: (N * k,) or (N, k).
        k: Samples per prompt.
        top_m: How many to keep per prompt.

    Returns:
        Indices within each prompt's group, in [0, k), best first; the flat index of sample
        ``j`` of prompt ``i`` is ``i * k + j``. Shape: (N, top_m).
    """
    if not 1 <= top_m <= k:
        raise ValueError(f"top_m must be in [1, k={k}], got {top_m}")
    if rewards.numel() % k != 0:
        raise ValueError(f"{rewards.numel()} rewards do not split into groups of k={k}")
    grouped = rewards.detach().reshape(-1, k)  # (N, k)
    # A stable sort on -r keeps equal rewards in index order.
    order = torch.sort(-grouped, dim=1, stable=True).indices  # (N, k)
    return order[:, :top_m]


def best_of_k_stats(rewards: torch.Tensor) -> dict[str, float]:
    """Summary of a best-of-K batch, as plotted in Llama 2 Fig. 7.

    Args:
        rewards: Scores of K samples for each of N prompts. Shape: (N, K).

    Returns:
        ``mean`` (over all samples), and the per-prompt ``max``, ``median`` and
        ``max_minus_median`` (the gain of rejection sampling over a typical sample), each
        averaged over prompts.
    """
    rewards = rewards.detach().float()
    best = rewards.max(dim=1).values  # (N,)
    median = torch.quantile(rewards, 0.5, dim=1)  # (N,), interpolated for even K
    return {
        "mean": rewards.mean().item(),
        "max": best.mean().item(),
        "median": median.mean().item(),
        "max_minus_median": (best - median).mean().item(),
    }


def analytic_best_of_k_kl(k: int) -> float:
    """KL(best-of-k || base policy) = log k - (k - 1) / k.

    The analytic value used by Stiennon et al. 2020 and Gao et al. 2022 to compare
    best-of-k sampling with RL at equal KL from the base policy.

    Args:
        k: Number of samples drawn per prompt.

    Returns:
        The KL in nats.
    """
    if k < 1:
        raise ValueError(f"k must be >= 1, got {k}")
    return math.log(k) - (k - 1) / k


def expected_best_of_k(rewards: torch.Tensor, k: int, values: torch.Tensor | None = None) -> torch.Tensor:
    """Unbiased estimate of E[max of k draws] from n >= k samples per prompt.

    With the n samples sorted ascending, r_(1) <= ... <= r_(n), the fraction of the C(n, k)
    size-k subsets whose maximum is r_(i) is C(i - 1, k - 1) / C(n, k), so
    E[max_k] ~ sum_i C(i - 1, k - 1) / C(n, k) * r_(i) (Nakano et al. 2021, WebGPT,
    appendix on best-of-n). One set of n samples thus gives the best-of-k curve for k = 1..n.

    With ``values`` (e.g. the gold reward of each sample), the same weights give the expected
    value of the sample that ``rewards`` selects: E[v(argmax_k r)], the gold curve of Gao et
    al. 2022 beside the proxy curve. Ties in ``rewards`` go to the lower index, as in select_best_of_k.

    Args:
        rewards: n scored samples for each of N prompts. Shape: (N, n).
        k: Number of draws, 1 <= k <= n.
        values: Optional value of each sample to read at the selected one. Shape: (N, n).

    Returns:
        Estimated expected best-of-k reward (or value of the best-of-k sample) per prompt.
        Shape: (N,).
    """
    n = rewards.shape[1]
    if not 1 <= k <= n:
        raise ValueError(f"k must be in [1, n={n}], got {k}")
    # Ascending by reward, equal rewards by descending index, so that among ties the lower
    # index ranks highest: the sample select_best_of_k keeps.
    n_cols = rewards.shape[1]
    flipped = torch.sort(rewards.detach().double().flip(1), dim=1, stable=True).indices
    order = (n_cols - 1) - flipped  # (N, n), ascending
    source = rewards if values is None else values
    if source.shape != rewards.shape:
        raise ValueError(f"values must have the shape of rewards {tuple(rewards.shape)}, got {tuple(source.shape)}")
    sorted_values = torch.gather(source.detach().double(), 1, order)  # (N, n)
    total = math.comb(n, k)
    # Python integers keep the binomials exact before the division.
    weights = torch.tensor(
        [math.comb(i - 1, k - 1) / total for i in range(1, n + 1)],
        dtype=torch.float64,
        device=rewards.device,
    )  # (n,), sums to 1
    out_dtype = source.dtype if source.is_floating_point() else torch.float32
    return (sorted_values @ weights).to(out_dtype)
