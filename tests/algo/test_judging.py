"""The judge's label from its choice-token logprobs, debiasing over both orders, position bias."""
import math

import pytest
import torch

from rayrlhf.algo.judging import choice_mass, debiased, first_preferred, position_stats


def test_first_preferred_renormalises_over_the_two_choices():
    # p("1") = 0.3, p("2") = 0.1: 0.3 / 0.4 = 0.75, whatever else the judge would say
    lp = torch.tensor([[math.log(0.3), math.log(0.1)], [math.log(0.2), math.log(0.2)]], dtype=torch.float64)
    torch.testing.assert_close(first_preferred(lp), torch.tensor([0.75, 0.5], dtype=torch.float64))
    torch.testing.assert_close(choice_mass(lp), torch.tensor([0.4, 0.4], dtype=torch.float64))


def test_debiasing_averages_both_orders():
    # a first: P(first) = 0.9; b first: P(first) = 0.7, so P(a) = 0.3 there: (0.9 + 0.3) / 2 = 0.6
    p = debiased(torch.tensor([0.9]), torch.tensor([0.7]))
    assert p.item() == pytest.approx(0.6)


def test_a_judge_that_always_says_one_has_the_largest_bias_and_no_preference_left():
    p_ab, p_ba = torch.tensor([1.0, 1.0]), torch.tensor([1.0, 1.0])
    stats = position_stats(p_ab, p_ba)
    assert stats == {"position_bias": 0.5, "first_rate": 1.0, "consistency": 0.0}
    torch.testing.assert_close(debiased(p_ab, p_ba), torch.tensor([0.5, 0.5]))


def test_an_unbiased_judge():
    # pair 0: P(a) = 0.8 either way; pair 1: P(a) = 0.3 a-first, P(b) = 0.6 b-first (bias +-0.05)
    stats = position_stats(torch.tensor([0.8, 0.3]), torch.tensor([0.2, 0.6]))
    # biases: (0.8 + 0.2) / 2 - 0.5 = 0; (0.3 + 0.6) / 2 - 0.5 = -0.05; mean -0.025
    assert stats["position_bias"] == pytest.approx(-0.025)
    assert stats["first_rate"] == pytest.approx(0.5)  # 0.8 and 0.6 pick the first, 0.3 and 0.2 not
    assert stats["consistency"] == pytest.approx(1.0)


def test_no_pairs():
    assert all(math.isnan(v) for v in position_stats(torch.tensor([]), torch.tensor([])).values())
