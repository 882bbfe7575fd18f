import math

import pytest
import torch

from rayrlhf.algo.advantages import (gae, group_centered_advantages, group_normalized_advantages,
                                     leave_one_out_advantages, reinforce_pp_returns, whiten_advantages)

REWARDS = torch.tensor([[0.0, 0.0, 1.0]])
VALUES = torch.tensor([[0.5, 0.2, 0.4]])


def test_gae_gamma1_lam1_is_reward_to_go_minus_value():
    # reward-to-go = [1, 1, 1]; A = [1 - 0.5, 1 - 0.2, 1 - 0.4] = [0.5, 0.8, 0.6]
    adv, ret = gae(REWARDS, VALUES, torch.ones(1, 3), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8, 0.6]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0]]))


def test_gae_discounted_by_hand():
    # gamma = 0.9, lam = 0.5, gamma * lam = 0.45; V after the last token is 0
    # delta_2 = 1 + 0.9 * 0 - 0.4 = 0.6
    # delta_1 = 0 + 0.9 * 0.4 - 0.2 = 0.16
    # delta_0 = 0 + 0.9 * 0.2 - 0.5 = -0.32
    # A_2 = 0.6; A_1 = 0.16 + 0.45 * 0.6 = 0.43; A_0 = -0.32 + 0.45 * 0.43 = -0.1265
    # returns = A + V = [0.3735, 0.63, 1.0]
    adv, ret = gae(REWARDS, VALUES, torch.ones(1, 3), gamma=0.9, lam=0.5)
    torch.testing.assert_close(adv, torch.tensor([[-0.1265, 0.43, 0.6]]))
    torch.testing.assert_close(ret, torch.tensor([[0.3735, 0.63, 1.0]]))


def test_gae_rows_of_different_lengths_do_not_leak_padding():
    # Row 1 has 2 response tokens; its padding holds reward 99 and value 7 that must not leak.
    # Row 1, gamma = lam = 1: A_1 = 2 + 0 - 0.5 = 1.5; A_0 = (0 + 0.5 - 1) + 1.5 = 1.0
    rewards = torch.tensor([[0.0, 0.0, 1.0], [0.0, 2.0, 99.0]])
    values = torch.tensor([[0.5, 0.2, 0.4], [1.0, 0.5, 7.0]])
    mask = torch.tensor([[1, 1, 1], [1, 1, 0]])
    adv, ret = gae(rewards, values, mask, gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.8, 0.6], [1.0, 1.5, 0.0]]))
    torch.testing.assert_close(ret, torch.tensor([[1.0, 1.0, 1.0], [2.0, 2.0, 0.0]]))


def test_gae_prompt_tokens_on_the_left_get_zero():
    # The first position is a prompt token (mask 0) with garbage reward/value.
    rewards = torch.tensor([[5.0, 0.0, 1.0]])
    values = torch.tensor([[9.0, 0.2, 0.4]])
    adv, _ = gae(rewards, values, torch.tensor([[0, 1, 1]]), gamma=1.0, lam=1.0)
    # same as the response part of the first test: [0.8, 0.6]
    torch.testing.assert_close(adv, torch.tensor([[0.0, 0.8, 0.6]]))


def test_gae_steps_over_masked_gap():
    # mask [1, 0, 1]: the middle token (e.g. tool output) is skipped, not an episode end.
    # A_2 = 1 - 0.4 = 0.6; A_0 = (0 + V_2 - V_0) + A_2 = (0.4 - 0.5) + 0.6 = 0.5
    rewards = torch.tensor([[0.0, 7.0, 1.0]])
    values = torch.tensor([[0.5, 9.0, 0.4]])
    adv, _ = gae(rewards, values, torch.tensor([[1, 0, 1]]), gamma=1.0, lam=1.0)
    torch.testing.assert_close(adv, torch.tensor([[0.5, 0.0, 0.6]]))


def test_gae_has_no_grad():
    values = VALUES.clone().requires_grad_()
    adv, ret = gae(REWARDS, values, torch.ones(1, 3))
    assert not adv.requires_grad and not ret.requires_grad


def test_whiten_advantages_by_hand():
    # entries 1, 2, 3, 4: mean 2.5, unbiased var (2.25 + 0.25 + 0.25 + 2.25) / 3 = 5/3
    adv = torch.tensor([[1.0, 2.0, 3.0], [4.0, 8.0, 8.0]])
    mask = torch.tensor([[1, 1, 1], [1, 0, 0]])
    std = math.sqrt(5.0 / 3.0)
    expected = torch.tensor(
        [[-1.5 / std, -0.5 / std, 0.5 / std], [1.5 / std, 0.0, 0.0]]
    )  # -1.5 / 1.29099 = -1.16190
    torch.testing.assert_close(whiten_advantages(adv, mask), expected)


def test_group_normalized_advantages_by_hand():
    # group 0: [1, 2, 3], mean 2, sample std sqrt((1 + 0 + 1) / 2) = 1 -> [-1, 0, 1]
    # group 1: [5, 5, 5], std 0 -> all 0
    scores = torch.tensor([1.0, 2.0, 3.0, 5.0, 5.0, 5.0])
    out = group_normalized_advantages(scores, group_size=3)
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0, 0.0, 0.0, 0.0]))
    out_2d = group_normalized_advantages(scores.reshape(2, 3), group_size=3)
    assert out_2d.shape == (2, 3)
    torch.testing.assert_close(out_2d.flatten(), out)


def test_group_normalized_advantages_edge_cases():
    assert torch.equal(group_normalized_advantages(torch.tensor([3.0, 4.0]), 1), torch.zeros(2))
    with pytest.raises(ValueError, match="groups"):
        group_normalized_advantages(torch.ones(5), group_size=2)


def test_leave_one_out_advantages_by_hand():
    # groups of 2: [1, 2] -> [1 - 2, 2 - 1] = [-1, 1]; [3, 6] -> [3 - 6, 6 - 3] = [-3, 3]
    out = leave_one_out_advantages(torch.tensor([1.0, 2.0, 3.0, 6.0]), group_size=2)
    torch.testing.assert_close(out, torch.tensor([-1.0, 1.0, -3.0, 3.0]))
    # group of 3: [1, 2, 6]: 1 - (2 + 6) / 2 = -3, 2 - (1 + 6) / 2 = -1.5, 6 - (1 + 2) / 2 = 4.5
    out = leave_one_out_advantages(torch.tensor([1.0, 2.0, 6.0]), group_size=3)
    torch.testing.assert_close(out, torch.tensor([-3.0, -1.5, 4.5]))
    with pytest.raises(ValueError, match="at least 2 samples"):
        leave_one_out_advantages(torch.ones(4), group_size=1)


def test_dr_grpo_advantages_do_not_divide_by_the_std():
    # [1, 2, 3, 6] in groups of 2: means 1.5 and 4.5 -> [-0.5, 0.5, -1.5, 1.5]; GRPO divides each
    # group by its sample std (0.7071 and 2.1213), giving +-0.7071 in both groups.
    scores = torch.tensor([1.0, 2.0, 3.0, 6.0])
    torch.testing.assert_close(group_centered_advantages(scores, 2), torch.tensor([-0.5, 0.5, -1.5, 1.5]))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(group_normalized_advantages(scores, 2), torch.tensor([-s, s, -s, s]),
                               atol=1e-5, rtol=1e-5)


def test_reinforce_pp_returns_are_the_summed_future_rewards():
    # row 0: rewards [-0.1, -0.2, 1.0 - 0.3] -> returns [0.4, 0.5, 0.7]
    # row 1: a masked gap at t=1 is stepped over, padding at t=3 stays 0:
    #   [-0.1, (x), 2.0, pad] -> [1.9, 0, 2.0, 0]
    rewards = torch.tensor([[-0.1, -0.2, 0.7, 0.0], [-0.1, 9.0, 2.0, 5.0]])
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [1.0, 0.0, 1.0, 0.0]])
    out = reinforce_pp_returns(rewards, mask)
    torch.testing.assert_close(out, torch.tensor([[0.4, 0.5, 0.7, 0.0], [1.9, 0.0, 2.0, 0.0]]))
    # gamma 0.5 on row 0: G_2 = 0.7, G_1 = -0.2 + 0.35 = 0.15, G_0 = -0.1 + 0.075 = -0.025
    out = reinforce_pp_returns(rewards[:1], mask[:1], gamma=0.5)
    torch.testing.assert_close(out, torch.tensor([[-0.025, 0.15, 0.7, 0.0]]))
