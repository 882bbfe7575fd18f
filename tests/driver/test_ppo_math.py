"""The driver's pure PPO step against numbers worked out by hand."""
import math

import pytest
import torch

from rayrlhf.actors.batch import build_batch, select_rows, split_rows
from rayrlhf.driver.ppo_math import behaviour_tensor, compute_advantages, loss_divisor

# One row: 2 prompt tokens, 2 response tokens -> columns (T-1 = 3): [prompt->r1, r1->r2] = cols 1, 2.
MASK = torch.tensor([[0.0, 1.0, 1.0]])
VALUES = torch.tensor([[0.0, 0.5, 0.2]])


def test_gae_without_kl():
    lp = torch.tensor([[0.0, -1.0, -2.0]])
    out = compute_advantages(torch.tensor([1.0]), lp, lp.clone(), VALUES, MASK, None, kl_coef=0.5,
                             gamma=1.0, lam=1.0, whiten=False)
    # rewards: [0, 0, 1]; delta_2 = 1 - 0.2 = 0.8; delta_1 = 0 + 0.2 - 0.5 = -0.3; A_1 = -0.3 + 0.8
    assert out["advantages"][0].tolist() == pytest.approx([0.0, 0.5, 0.8])
    assert out["returns"][0, 1:].tolist() == pytest.approx([1.0, 1.0])
    assert out["stats"]["kl/per_response"] == pytest.approx(0.0)


def test_kl_penalty_in_the_reward():
    old = torch.tensor([[0.0, -1.0, -2.0]])
    ref = torch.tensor([[0.0, -1.1, -1.8]])  # k1 = old - ref = [0.1, -0.2] on the response
    out = compute_advantages(torch.tensor([1.0]), old, ref, VALUES, MASK, None, kl_coef=0.5,
                             gamma=1.0, lam=1.0, whiten=False)
    # r_1 = -0.5 * 0.1 = -0.05; r_2 = -0.5 * -0.2 + 1 = 1.1
    # delta_2 = 1.1 - 0.2 = 0.9; delta_1 = -0.05 + 0.2 - 0.5 = -0.35; A_1 = -0.35 + 0.9 = 0.55
    assert out["advantages"][0, 1:].tolist() == pytest.approx([0.55, 0.9])
    assert out["stats"]["kl/per_response"] == pytest.approx(-0.1)
    as_loss = compute_advantages(torch.tensor([1.0]), old, ref, VALUES, MASK, None, kl_coef=0.5, kl_in="loss",
                                 gamma=1.0, lam=1.0, whiten=False)
    assert as_loss["advantages"][0, 1:].tolist() == pytest.approx([0.5, 0.8])  # KL left the reward


def test_truncated_importance_weights_scale_advantages():
    old = torch.tensor([[0.0, -1.0, -2.0]])
    behaviour = torch.tensor([[0.0, -1.0 - math.log(3.0), -2.0]])  # pi_old / pi_b = 3 on r1, 1 on r2
    out = compute_advantages(torch.tensor([1.0]), old, old.clone(), VALUES, MASK, behaviour, kl_coef=0.0,
                             gamma=1.0, lam=1.0, whiten=False, importance_cap=2.0)
    assert out["advantages"][0, 1:].tolist() == pytest.approx([0.5 * 2.0, 0.8 * 1.0])
    assert out["stats"]["async/importance_weight_capped"] == pytest.approx(0.5)


def test_batch_layout_and_behaviour_placement():
    b = build_batch([[5, 6, 7], [5]], [[8, 9], [8, 9, 10, 2]], pad_id=0)
    assert b["input_ids"].tolist() == [[5, 6, 7, 8, 9], [5, 8, 9, 10, 2]]
    # column t predicts token t+1: row 0's response tokens sit at positions 3, 4 -> columns 2, 3
    assert b["response_mask"].tolist() == [[0, 0, 1, 1], [1, 1, 1, 1]]
    beh = behaviour_tensor([[-0.1, -0.2], [-1, -2, -3, -4]], b["response_mask"])
    assert torch.allclose(beh, torch.tensor([[0, 0, -0.1, -0.2], [-1, -2, -3, -4.0]]))
    short = build_batch([[5, 6], [5, 6, 7, 8, 9]], [[8], [2]], pad_id=0)
    sub = select_rows(short, [0])  # trimmed to its own length
    assert sub["input_ids"].tolist() == [[5, 6, 8]] and sub["response_mask"].tolist() == [[0, 1]]
    assert split_rows(5, 2) == [[0, 1, 2], [3, 4]] and split_rows(1, 3) == [[0], [], []]


def test_engine_mismatch_kl_is_k3_of_the_engines_samples():
    import math

    from rayrlhf.driver.ppo_math import engine_mismatch_kl

    mask = torch.tensor([[1.0, 1.0, 0.0]])
    trainer = torch.tensor([[math.log(0.5), math.log(0.3), 5.0]])
    engine = torch.tensor([[math.log(0.25), math.log(0.3), -5.0]])  # the masked column never counts
    # Token 1: r = 0.5 / 0.25 = 2, k3 = r - 1 - log r = 1 - log 2; token 2: r = 1, k3 = 0.
    assert engine_mismatch_kl(trainer, engine, mask) == pytest.approx((1 - math.log(2)) / 2, rel=1e-6)
    assert engine_mismatch_kl(trainer, trainer, mask) == 0.0


def test_behaviour_rows_fresh_samples_weigh_one_unless_tis():
    from rayrlhf.driver.ppo_math import behaviour_for_rows

    engine = torch.tensor([[-1.0, -2.0], [-3.0, -4.0]])
    old = torch.tensor([[-1.5, -2.5], [-3.5, -4.5]])
    stale = torch.tensor([True, False])
    assert torch.equal(behaviour_for_rows(engine, old, stale, False), torch.tensor([[-1.0, -2.0], [-3.5, -4.5]]))
    assert torch.equal(behaviour_for_rows(engine, old, stale, True), engine)
    mask = torch.ones(2, 2)
    out = compute_advantages(torch.tensor([1.0, 0.0]), old, old, torch.zeros(2, 2), mask,
                             behaviour_for_rows(engine, old, stale, False), 0.0, whiten=False, importance_cap=2.0)
    ref = compute_advantages(torch.tensor([1.0, 0.0]), old, old, torch.zeros(2, 2), mask, None, 0.0, whiten=False)
    # Row 0 (stale): w = min(exp(old - engine), 2) = exp(-0.5); row 1 (fresh): w = 1 exactly.
    assert torch.allclose(out["advantages"][0], ref["advantages"][0] * math.exp(-0.5))
    assert torch.equal(out["advantages"][1], ref["advantages"][1])


def test_rloo_with_the_kl_in_the_reward_subtracts_each_sequences_kl_before_the_baseline():
    # Two samples of one prompt, two response tokens each; k1 KL per token = old - ref.
    old = torch.tensor([[-1.0, -1.0], [-1.0, -1.0]])
    ref = torch.tensor([[-1.0, -1.0], [-2.0, -1.5]])  # KL sums: 0 and 1.5
    mask = torch.ones(2, 2)
    scores = torch.tensor([1.0, 3.0])
    # beta 0.4: outcomes 1 - 0 = 1, 3 - 0.6 = 2.4 -> RLOO [1 - 2.4, 2.4 - 1] = [-1.4, 1.4] per token
    out = compute_advantages(scores, old, ref, None, mask, None, kl_coef=0.4, estimator="rloo", group_size=2)
    torch.testing.assert_close(out["advantages"], torch.tensor([[-1.4, -1.4], [1.4, 1.4]]))
    assert not any(k.startswith("critic/") for k in out["stats"])
    # kl_in: loss leaves the scores alone: [1 - 3, 3 - 1]
    out = compute_advantages(scores, old, ref, None, mask, None, kl_coef=0.4, kl_in="loss", kl_estimator="k3",
                             estimator="rloo", group_size=2)
    torch.testing.assert_close(out["advantages"], torch.tensor([[-2.0, -2.0], [2.0, 2.0]]))


def test_grpo_and_dr_grpo_broadcast_over_the_response_tokens_only():
    lp = torch.zeros(2, 3)
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    scores = torch.tensor([0.0, 2.0])  # mean 1, sample std sqrt(2)
    out = compute_advantages(scores, lp, lp.clone(), None, mask, None, kl_coef=0.1, estimator="grpo", group_size=2)
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(out["advantages"], torch.tensor([[-s, -s, 0.0], [s, s, s]]), atol=1e-5, rtol=1e-5)
    out = compute_advantages(scores, lp, lp.clone(), None, mask, None, kl_coef=0.1, estimator="grpo", group_size=2,
                             std_normalize=False)
    torch.testing.assert_close(out["advantages"], torch.tensor([[-1.0, -1.0, 0.0], [1.0, 1.0, 1.0]]))


def test_reinforce_pp_whitens_the_summed_kl_penalised_rewards():
    old = torch.tensor([[-1.0, -1.0]])
    ref = torch.tensor([[-2.0, -1.0]])  # k1 KL [1, 0]
    # beta 0.5: rewards [-0.5, 2.0] -> returns [1.5, 2.0]; whitened: mean 1.75, unbiased std
    # sqrt(0.125) -> [-0.7071, 0.7071]
    out = compute_advantages(torch.tensor([2.0]), old, ref, None, torch.ones(1, 2), None, kl_coef=0.5,
                             estimator="reinforce++")
    torch.testing.assert_close(out["returns"], torch.tensor([[1.5, 2.0]]))
    s = 1 / math.sqrt(2)
    torch.testing.assert_close(out["advantages"], torch.tensor([[-s, s]]), atol=1e-5, rtol=1e-5)


def test_loss_divisor_is_the_token_count_or_a_constant():
    # 2 rows with 3 and 1 response tokens; max_new_tokens 8
    mask = torch.tensor([[1.0, 1.0, 1.0, 0.0], [0.0, 1.0, 0.0, 0.0]])
    assert loss_divisor(mask, "token_mean", 8) == 4.0
    assert loss_divisor(mask, "seq_sum_token_norm", 8) == 16.0  # 2 rows x 8, whatever the lengths
    assert loss_divisor(mask[:, :2], "seq_sum_token_norm", 8) == 16.0
