import math

import pytest
import torch

from rayrlhf.algo.best_of_k import (
    analytic_best_of_k_kl,
    best_of_k_stats,
    expected_best_of_k,
    select_best_of_k,
)


def test_select_best_of_k_flat_and_grouped():
    # prompt 0: [0.1, 0.9, 0.5] -> order 1, 2, 0
    # prompt 1: [0.3, 0.3, 0.2] -> tie between 0 and 1 goes to the lower index: 0, 1, 2
    flat = torch.tensor([0.1, 0.9, 0.5, 0.3, 0.3, 0.2])
    assert select_best_of_k(flat, k=3).tolist() == [[1], [0]]
    assert select_best_of_k(flat, k=3, top_m=2).tolist() == [[1, 2], [0, 1]]
    assert select_best_of_k(flat.reshape(2, 3), k=3, top_m=3).tolist() == [[1, 2, 0], [0, 1, 2]]


def test_select_best_of_k_all_ties_is_index_order():
    assert select_best_of_k(torch.zeros(1, 40), k=40, top_m=5).tolist() == [[0, 1, 2, 3, 4]]


def test_select_best_of_k_rejects_bad_sizes():
    with pytest.raises(ValueError, match="top_m"):
        select_best_of_k(torch.zeros(6), k=3, top_m=4)
    with pytest.raises(ValueError, match="groups"):
        select_best_of_k(torch.zeros(7), k=3)


def test_best_of_k_stats_by_hand():
    # prompt 0: [1, 2, 6] max 6 median 2; prompt 1: [0, 0, 3] max 3 median 0
    # mean 12 / 6 = 2; max (6 + 3) / 2 = 4.5; median (2 + 0) / 2 = 1; max - median (4 + 3) / 2
    stats = best_of_k_stats(torch.tensor([[1.0, 2.0, 6.0], [0.0, 0.0, 3.0]]))
    assert stats == pytest.approx(
        {"mean": 2.0, "max": 4.5, "median": 1.0, "max_minus_median": 3.5}
    )


def test_best_of_k_stats_even_k_median_interpolates():
    # [1, 2, 3, 10]: median (2 + 3) / 2 = 2.5; max - median = 7.5
    stats = best_of_k_stats(torch.tensor([[10.0, 1.0, 3.0, 2.0]]))
    assert stats["median"] == pytest.approx(2.5)
    assert stats["max_minus_median"] == pytest.approx(7.5)


def test_analytic_best_of_k_kl_by_hand():
    assert analytic_best_of_k_kl(1) == 0.0
    assert analytic_best_of_k_kl(2) == pytest.approx(math.log(2) - 0.5)  # 0.1931
    assert analytic_best_of_k_kl(4) == pytest.approx(math.log(4) - 0.75)  # 0.6363


def test_expected_best_of_k_n3_k2_by_hand():
    # Row 0: samples [3, 1, 2]; pairs {3,1} -> 3, {3,2} -> 3, {1,2} -> 2: mean 8/3.
    #   Order statistics: sorted [1, 2, 3], weights C(i-1, 1) / C(3, 2) = [0, 1/3, 2/3]
    #   -> 2/3 + 2 = 8/3.
    # Row 1: samples [0, 4, 0]; pairs {0,4}, {0,0}, {4,0} -> 4, 0, 4: mean 8/3.
    rewards = torch.tensor([[3.0, 1.0, 2.0], [0.0, 4.0, 0.0]])
    torch.testing.assert_close(expected_best_of_k(rewards, 2), torch.tensor([8 / 3, 8 / 3]))


def test_expected_best_of_k_endpoints():
    rewards = torch.tensor([[3.0, 1.0, 2.0]])
    # k = 1 is the sample mean; k = n is the sample max
    assert expected_best_of_k(rewards, 1).item() == pytest.approx(2.0)
    assert expected_best_of_k(rewards, 3).item() == pytest.approx(3.0)
    with pytest.raises(ValueError, match="k must be"):
        expected_best_of_k(rewards, 4)


def test_expected_best_of_k_large_n_weights_sum_to_one():
    # C(60, 30) ~ 1.2e17: the weights must still sum to 1, so a constant row maps to itself.
    rewards = torch.full((2, 60), 0.7, dtype=torch.float64)
    torch.testing.assert_close(
        expected_best_of_k(rewards, 30), torch.full((2,), 0.7, dtype=torch.float64)
    )


def test_expected_best_of_k_integer_rewards_are_not_truncated():
    # [0, 1]: best of 2 is 1, best of 1 is the mean 0.5 (an int result would give 0)
    assert expected_best_of_k(torch.tensor([[0, 1]]), 1).item() == pytest.approx(0.5)


def test_expected_value_of_the_proxy_selected_sample_by_hand():
    # Proxy [3, 1, 2], gold [0.0, 1.0, 0.5]. Pairs and the proxy's pick:
    #   {s0, s1} -> s0 (gold 0), {s0, s2} -> s0 (gold 0), {s1, s2} -> s2 (gold 0.5): mean 1/6.
    proxy = torch.tensor([[3.0, 1.0, 2.0]])
    gold = torch.tensor([[0.0, 1.0, 0.5]])
    assert expected_best_of_k(proxy, 2, values=gold).item() == pytest.approx(1 / 6)
    # k = 1 is the gold mean; k = n is the gold of the proxy's argmax
    assert expected_best_of_k(proxy, 1, values=gold).item() == pytest.approx(0.5)
    assert expected_best_of_k(proxy, 3, values=gold).item() == pytest.approx(0.0)
    # values equal to the rewards give the plain best-of-k
    torch.testing.assert_close(expected_best_of_k(proxy, 2, values=proxy), expected_best_of_k(proxy, 2))
    with pytest.raises(ValueError, match="shape"):
        expected_best_of_k(proxy, 2, values=gold[:, :2])


def test_ties_go_to_the_lower_index_in_selection_and_in_the_expected_curve():
    """One tie rule: of equal rewards the lower index wins, when selecting and when crediting."""
    rewards = torch.tensor([[1.0, 1.0, 1.0]])
    values = torch.tensor([[1.0, 2.0, 4.0]])
    assert select_best_of_k(rewards, k=3).flatten().tolist()[0] == 0
    # k = n: the sample selection keeps, index 0.
    assert float(expected_best_of_k(rewards, 3, values)[0]) == pytest.approx(1.0)
    # k = 2 by hand: subsets {0,1} -> v0, {0,2} -> v0, {1,2} -> v1: (1 + 1 + 2) / 3.
    assert float(expected_best_of_k(rewards, 2, values)[0]) == pytest.approx(4 / 3)
