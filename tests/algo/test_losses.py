import math

import pytest
import torch

from rayrlhf.algo.losses import (
    dpo_loss,
    pairwise_reward_loss,
    ppo_policy_loss,
    sft_loss,
    value_loss,
)


def softplus(x: float) -> float:
    # -log sigmoid(x) = log(1 + e^{-x})
    return math.log1p(math.exp(-x))


# ---------------------------------------------------------------- SFT

# Position 0: p = [1/2, 1/2]; position 1: p = [3/4, 1/4]; position 2 predicts nothing.
SFT_LOGITS = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [5.0, -5.0]]])
SFT_IDS = torch.tensor([[1, 0, 1]])


def test_sft_loss_by_hand():
    # Targets ids[1] = 0 (p = 1/2) and ids[2] = 1 (p = 1/4):
    # NLL = (log 2 + log 4) / 2 = 1.5 log 2
    loss, n_tokens = sft_loss(SFT_LOGITS, SFT_IDS, torch.tensor([[0, 1, 1]]))
    assert loss.item() == pytest.approx(1.5 * math.log(2.0))
    assert n_tokens.item() == 2


def test_sft_loss_mask_is_aligned_with_targets():
    # Only ids[2] is a target: NLL = log 4. loss_mask[:, 0] has no prediction and is ignored.
    for mask in ([0, 0, 1], [1, 0, 1]):
        loss, n_tokens = sft_loss(SFT_LOGITS, SFT_IDS, torch.tensor([mask]))
        assert loss.item() == pytest.approx(math.log(4.0))
        assert n_tokens.item() == 1


def test_sft_loss_num_tokens_divides_the_sum():
    # sum of NLL = log 2 + log 4 = 3 log 2; divided by 6
    loss, _ = sft_loss(SFT_LOGITS, SFT_IDS, torch.tensor([[0, 1, 1]]), num_tokens=6)
    assert loss.item() == pytest.approx(3 * math.log(2.0) / 6)


def test_sft_loss_shards_sum_to_full_batch():
    torch.manual_seed(0)
    logits = torch.randn(2, 5, 7)
    ids = torch.randint(0, 7, (2, 5))
    mask = torch.tensor([[0, 0, 0, 0, 1], [0, 1, 1, 1, 1]])  # 1 and 4 targets: unequal shards
    full, n_full = sft_loss(logits, ids, mask)
    l0, n0 = sft_loss(logits[:1], ids[:1], mask[:1], num_tokens=int(n_full))
    l1, n1 = sft_loss(logits[1:], ids[1:], mask[1:], num_tokens=int(n_full))
    assert n0 + n1 == n_full == 5
    torch.testing.assert_close(l0 + l1, full)
    # Averaging per-shard means would be wrong here, so the check above is not vacuous.
    m0, _ = sft_loss(logits[:1], ids[:1], mask[:1])
    m1, _ = sft_loss(logits[1:], ids[1:], mask[1:])
    assert abs((m0 + m1).item() / 2 - full.item()) > 1e-3


# ---------------------------------------------------------------- pairwise RM


def test_pairwise_loss_with_margin_by_hand():
    chosen = torch.tensor([2.0, 0.5], requires_grad=True)
    rejected = torch.tensor([0.5, 1.0])
    margin = torch.tensor([0.5, 0.0])
    loss, stats = pairwise_reward_loss(chosen, rejected, margin=margin)
    # pair 0: -log sigmoid(2 - 0.5 - 0.5) = log(1 + e^-1) = 0.31326
    # pair 1: -log sigmoid(0.5 - 1 - 0) = log(1 + e^0.5) = 0.97408
    assert loss.item() == pytest.approx((softplus(1.0) + softplus(-0.5)) / 2)  # 0.64367
    assert stats["accuracy"].item() == pytest.approx(0.5)
    assert stats["chosen_mean"].item() == pytest.approx(1.25)
    assert stats["rejected_mean"].item() == pytest.approx(0.75)
    assert stats["margin_mean"].item() == pytest.approx((1.5 - 0.5) / 2)
    loss.backward()
    # d/dr_c of -log sigmoid(d) = -sigmoid(-d), halved by the mean:
    # pair 0 (d = 1): -0.26894 / 2; pair 1 (d = -0.5): -0.62246 / 2
    expected = [-1 / (1 + math.exp(1.0)) / 2, -1 / (1 + math.exp(-0.5)) / 2]
    torch.testing.assert_close(chosen.grad, torch.tensor(expected))


def test_pairwise_loss_with_soft_labels_by_hand():
    # Bradley-Terry cross-entropy: -p log sigmoid(d - m) - (1 - p) log sigmoid(-d - m).
    # (softplus(x) here is -log sigmoid(x))
    # pair 0: d = 1, m = 0, p = 0.75: 0.75 softplus(1) + 0.25 softplus(-1) = 0.75 * 0.31326 + 0.25 * 1.31326
    # pair 1: d = -0.5, m = 0.5, p = 1: softplus(-1) = 1.31326 (the hard loss, margin inside)
    chosen = torch.tensor([1.5, 0.0], requires_grad=True)
    rejected = torch.tensor([0.5, 0.5])
    loss, _ = pairwise_reward_loss(chosen, rejected, margin=torch.tensor([0.0, 0.5]), p_chosen=torch.tensor([0.75, 1.0]))
    expected = (0.75 * softplus(1.0) + 0.25 * softplus(-1.0) + softplus(-1.0)) / 2  # 0.93826
    assert loss.item() == pytest.approx(expected)
    loss.backward()
    # d/dd of pair 0: -0.75 sigmoid(-1) + 0.25 sigmoid(1) = -0.20171 + 0.18277, halved
    g0 = (-0.75 / (1 + math.exp(1.0)) + 0.25 / (1 + math.exp(-1.0))) / 2
    assert chosen.grad[0].item() == pytest.approx(g0)
    # p = 0.5 has its minimum at d = 0: the gradient there is 0
    d = torch.tensor([0.0], requires_grad=True)
    pairwise_reward_loss(d, torch.tensor([0.0]), p_chosen=torch.tensor([0.5]))[0].backward()
    assert d.grad.item() == pytest.approx(0.0)


def test_pairwise_loss_without_margin():
    # -log sigmoid(1.5 - 0.5) = log(1 + e^-1) = 0.31326
    loss, _ = pairwise_reward_loss(torch.tensor([1.5]), torch.tensor([0.5]))
    assert loss.item() == pytest.approx(softplus(1.0))


def test_pairwise_loss_is_stable_for_large_gaps():
    # -log sigmoid(-200) = 200 (a naive log(sigmoid(.)) would give inf)
    loss, _ = pairwise_reward_loss(torch.tensor([-100.0]), torch.tensor([100.0]))
    assert loss.item() == pytest.approx(200.0)


def test_pairwise_loss_shards_sum_to_full_batch():
    chosen = torch.tensor([0.3, -1.0, 2.0, 0.1])
    rejected = torch.tensor([0.0, 0.5, -0.5, 0.4])
    margin = torch.tensor([1.0, 0.0, 0.5, 0.2])
    full, _ = pairwise_reward_loss(chosen, rejected, margin)
    l0, _ = pairwise_reward_loss(chosen[:1], rejected[:1], margin[:1], num_pairs=4)
    l1, _ = pairwise_reward_loss(chosen[1:], rejected[1:], margin[1:], num_pairs=4)
    torch.testing.assert_close(l0 + l1, full)


def test_pairwise_loss_weights_make_each_ranked_list_count_once():
    # one ranked list of 3 (pairs a>b, a>c, b>c, weight 1/3 each) and one plain pair (weight 1),
    # over 2 examples: ((l_ab + l_ac + l_bc) / 3 + l_pair) / 2
    r = {"a": 1.0, "b": 0.0, "c": -1.0}
    chosen = torch.tensor([r["a"], r["a"], r["b"], 0.5])
    rejected = torch.tensor([r["b"], r["c"], r["c"], 1.0])
    weights = torch.tensor([1 / 3, 1 / 3, 1 / 3, 1.0])
    loss, _ = pairwise_reward_loss(chosen, rejected, weights=weights, num_pairs=2)
    expected = ((softplus(1.0) + softplus(2.0) + softplus(1.0)) / 3 + softplus(-0.5)) / 2
    assert loss.item() == pytest.approx(expected)  # (0.25115 + 0.97408) / 2 = 0.61262
    # without num_pairs the weights' sum (2) divides
    assert pairwise_reward_loss(chosen, rejected, weights=weights)[0].item() == pytest.approx(expected)


# ---------------------------------------------------------------- PPO policy


def _ppo_inputs(ratios, advantages):
    logprobs = torch.log(torch.tensor([ratios])).requires_grad_()
    old_logprobs = torch.zeros_like(logprobs)
    return logprobs, old_logprobs, torch.tensor([advantages])


def test_ppo_clip_cases_by_hand():
    # eps = 0.2; per token -min(rho A, clip(rho, 0.8, 1.2) A):
    #   rho 1.5, A +1: -min(1.5, 1.2) = -1.2  (clipped -> no gradient)
    #   rho 1.5, A -1: -min(-1.5, -1.2) = 1.5 (unclipped: the pessimistic term)
    #   rho 0.5, A +1: -min(0.5, 0.8) = -0.5  (unclipped)
    #   rho 0.5, A -1: -min(-0.5, -0.8) = 0.8 (clipped -> no gradient)
    logprobs, old, adv = _ppo_inputs([1.5, 1.5, 0.5, 0.5], [1.0, -1.0, 1.0, -1.0])
    mask = torch.ones(1, 4)
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx((-1.2 + 1.5 - 0.5 + 0.8) / 4)  # 0.15
    assert stats["clipfrac"].item() == pytest.approx(0.5)
    assert stats["ratio_mean"].item() == pytest.approx(1.0)
    # k3: rho - 1 - log rho = 0.5 - log 1.5 = 0.09453 and -0.5 + log 2 = 0.19315
    k3 = [0.5 - math.log(1.5), -0.5 + math.log(2.0)]
    assert stats["approx_kl"].item() == pytest.approx((k3[0] + k3[1]) / 2)
    loss.backward()
    # d(-A rho)/d log rho = -A rho on unclipped tokens, divided by 4 tokens
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 1.5 / 4, -0.5 / 4, 0.0]]))


def test_ppo_clip_higher():
    # eps_high = 0.6: rho 1.5 is inside [0.8, 1.6], so token 0 is now -1.5 with grad -1.5 / 4
    logprobs, old, adv = _ppo_inputs([1.5, 1.5, 0.5, 0.5], [1.0, -1.0, 1.0, -1.0])
    loss, stats = ppo_policy_loss(logprobs, old, adv, torch.ones(1, 4), 0.2, clip_eps_high=0.6)
    assert loss.item() == pytest.approx((-1.5 + 1.5 - 0.5 + 0.8) / 4)  # 0.075
    assert stats["clipfrac"].item() == pytest.approx(0.25)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[-1.5 / 4, 1.5 / 4, -0.5 / 4, 0.0]]))


def test_ppo_dual_clip():
    # c = 3. rho 5, A -1: min(max(5, 1.2), 3) = 3 (capped -> no gradient)
    #        rho 2, A -1: min(max(2, 1.2), 3) = 2 (grad -A rho = 2)
    #        rho 5, A +1: -min(5, 1.2) = -1.2 (dual clip only touches A < 0)
    logprobs, old, adv = _ppo_inputs([5.0, 2.0, 5.0], [-1.0, -1.0, 1.0])
    mask = torch.ones(1, 3)
    plain, _ = ppo_policy_loss(logprobs, old, adv, mask)
    assert plain.item() == pytest.approx((5.0 + 2.0 - 1.2) / 3)
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask, dual_clip=3.0)
    assert loss.item() == pytest.approx((3.0 + 2.0 - 1.2) / 3)
    assert stats["dual_clipfrac"].item() == pytest.approx(1 / 3)
    loss.backward()
    torch.testing.assert_close(logprobs.grad, torch.tensor([[0.0, 2.0 / 3, 0.0]]))
    with pytest.raises(ValueError, match="dual_clip"):
        ppo_policy_loss(logprobs, old, adv, mask, dual_clip=1.0)


def test_ppo_ignores_padding():
    # A padded token with a wild ratio changes neither the loss nor the stats.
    logprobs, old, adv = _ppo_inputs([1.5, 1.5, 1e6], [1.0, -1.0, 50.0])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = ppo_policy_loss(logprobs, old, adv, mask)
    assert loss.item() == pytest.approx((-1.2 + 1.5) / 2)
    assert stats["ratio_mean"].item() == pytest.approx(1.5)
    loss.backward()
    assert logprobs.grad[0, 2].item() == 0.0


def test_ppo_shards_sum_to_full_batch():
    torch.manual_seed(0)
    logprobs = torch.randn(2, 6) * 0.3
    old = torch.randn(2, 6) * 0.3
    adv = torch.randn(2, 6)
    mask = torch.tensor([[1, 1, 0, 0, 0, 0], [1, 1, 1, 1, 1, 0]], dtype=torch.float32)
    full, _ = ppo_policy_loss(logprobs, old, adv, mask)
    n = int(mask.sum())
    l0, _ = ppo_policy_loss(logprobs[:1], old[:1], adv[:1], mask[:1], num_tokens=n)
    l1, _ = ppo_policy_loss(logprobs[1:], old[1:], adv[1:], mask[1:], num_tokens=n)
    torch.testing.assert_close(l0 + l1, full)


# ---------------------------------------------------------------- value


def test_value_loss_clipped_by_hand():
    # c = 0.2; token 2 is padding with garbage.
    #   V 1, V_old 0.5, R 0: (V-R)^2 = 1; V_clip = 0.7, (0.7)^2 = 0.49 -> 0.5 * 1 = 0.5
    #   V 1, V_old 0,   R 1: (V-R)^2 = 0; V_clip = 0.2, (0.8)^2 = 0.64 -> 0.5 * 0.64 = 0.32
    values = torch.tensor([[1.0, 1.0, 50.0]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.0, -50.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old_values, returns, mask, clip_range=0.2)
    assert loss.item() == pytest.approx((0.5 + 0.32) / 2)  # 0.41
    assert stats["vf_clipfrac"].item() == pytest.approx(0.5)
    loss.backward()
    # token 0: d/dV 0.5 (V-R)^2 = V - R = 1, / 2 tokens; token 1 uses the clipped V: no grad
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))


def test_value_loss_unclipped():
    # 0.5 * [(1 - 0)^2, (1 - 1)^2] averaged = 0.25
    values = torch.tensor([[1.0, 1.0, 50.0]], requires_grad=True)
    old_values = torch.tensor([[0.5, 0.0, -50.0]])
    returns = torch.tensor([[0.0, 1.0, 0.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    loss, stats = value_loss(values, old_values, returns, mask)
    assert loss.item() == pytest.approx(0.25)
    assert stats["vf_clipfrac"].item() == 0.0
    loss.backward()
    torch.testing.assert_close(values.grad, torch.tensor([[0.5, 0.0, 0.0]]))


def test_value_loss_shards_sum_to_full_batch():
    values = torch.tensor([[0.1, 0.5, 0.9], [1.0, -1.0, 0.0]])
    old_values = torch.tensor([[0.0, 0.2, 0.5], [0.5, -0.5, 0.3]])
    returns = torch.tensor([[1.0, 0.0, 0.4], [0.7, 0.1, 2.0]])
    mask = torch.tensor([[1.0, 0.0, 0.0], [1.0, 1.0, 1.0]])
    full, _ = value_loss(values, old_values, returns, mask, clip_range=0.2)
    total = 0.0
    for rows in (slice(0, 1), slice(1, 2)):
        part, _ = value_loss(
            values[rows], old_values[rows], returns[rows], mask[rows], 0.2, num_tokens=4
        )
        total = total + part
    torch.testing.assert_close(total, full)


# ---------------------------------------------------------------- DPO


def test_dpo_loss_by_hand():
    # beta = 0.5
    # pair 0: chosen log-ratio -1 - (-2) = 1, rejected -3 - (-2) = -1, h = 0.5 * 2 = 1
    #         loss = -log sigmoid(1) = 0.31326
    # pair 1: both log-ratios 0, h = 0, loss = log 2 = 0.69315
    pc = torch.tensor([-1.0, -2.0], requires_grad=True)
    pr = torch.tensor([-3.0, -2.0])
    rc = torch.tensor([-2.0, -2.0])
    rr = torch.tensor([-2.0, -2.0])
    loss, stats = dpo_loss(pc, pr, rc, rr, beta=0.5)
    assert loss.item() == pytest.approx((softplus(1.0) + math.log(2.0)) / 2)  # 0.50320
    # implicit rewards: chosen [0.5, 0], rejected [-0.5, 0]
    assert stats["chosen_reward"].item() == pytest.approx(0.25)
    assert stats["rejected_reward"].item() == pytest.approx(-0.25)
    assert stats["reward_margin"].item() == pytest.approx(0.5)
    assert stats["reward_accuracy"].item() == pytest.approx(0.5)  # a tie is not a win
    loss.backward()
    # d/d pc = -beta * sigmoid(-h) / B: pair 0: -0.5 * 0.26894 / 2; pair 1: -0.5 * 0.5 / 2
    torch.testing.assert_close(
        pc.grad, torch.tensor([-0.5 / (1 + math.exp(1.0)) / 2, -0.5 * 0.5 / 2])
    )


def test_dpo_label_smoothing():
    # ls = 0.1, h = 1: 0.9 * log(1 + e^-1) + 0.1 * log(1 + e) = 0.28194 + 0.13133 = 0.41326
    loss, _ = dpo_loss(
        torch.tensor([-1.0]), torch.tensor([-3.0]), torch.tensor([-2.0]), torch.tensor([-2.0]),
        beta=0.5, label_smoothing=0.1,
    )
    assert loss.item() == pytest.approx(0.9 * softplus(1.0) + 0.1 * softplus(-1.0))


def test_ppo_policy_loss_with_a_constant_normaliser_by_hand():
    # At ratio 1 each token's loss is -A. Advantages 1, 1 (row 0) and 2 (row 1) on 3 response
    # tokens: sum -4; token mean -4 / 3; Dr. GRPO's constant 2 rows x 4 max tokens: -4 / 8.
    lp = torch.zeros(2, 3)
    adv = torch.tensor([[1.0, 1.0, 5.0], [2.0, 7.0, 7.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    token_mean, _ = ppo_policy_loss(lp, lp.clone(), adv, mask)
    torch.testing.assert_close(token_mean, torch.tensor(-4.0 / 3.0))
    constant, _ = ppo_policy_loss(lp, lp.clone(), adv, mask, num_tokens=8.0)
    torch.testing.assert_close(constant, torch.tensor(-0.5))


def test_ipo_loss_by_hand():
    # beta = 0.5, so the target 1 / (2 beta) = 1
    # pair 0: u = (-1 - -2) - (-3 - -2) = 2, loss = (2 - 1)^2 = 1
    # pair 1: u = 0, loss = (0 - 1)^2 = 1; pair 2: u = 1, loss = 0
    pc = torch.tensor([-1.0, -2.0, -1.0])
    pr = torch.tensor([-3.0, -2.0, -2.0])
    ref = torch.tensor([-2.0, -2.0, -2.0])
    loss, stats = dpo_loss(pc, pr, ref, ref, beta=0.5, loss_type="ipo")
    assert loss.item() == pytest.approx(2.0 / 3.0)
    assert stats["reward_accuracy"].item() == pytest.approx(2.0 / 3.0)
    # with a margin of 1 on pair 2: (1 - 1 - 1)^2 = 1
    loss, _ = dpo_loss(pc, pr, ref, ref, beta=0.5, loss_type="ipo", margin=torch.tensor([0.0, 0.0, 1.0]))
    assert loss.item() == pytest.approx(1.0)


def test_cdpo_and_margin_by_hand():
    # cDPO ls = 0.25 at h = 0: 0.75 log 2 + 0.25 log 2 = log 2 whatever ls
    zero = torch.tensor([-2.0])
    loss, _ = dpo_loss(zero, zero, zero, zero, beta=0.1, label_smoothing=0.25)
    assert loss.item() == pytest.approx(math.log(2.0))
    # h = beta * u - m = 0.5 * 2 - 3 = -2: 0.75 * log(1 + e^2) + 0.25 * log(1 + e^-2)
    pc, pr = torch.tensor([-1.0]), torch.tensor([-3.0])
    loss, _ = dpo_loss(pc, pr, zero, zero, beta=0.5, label_smoothing=0.25, margin=torch.tensor([3.0]))
    assert loss.item() == pytest.approx(0.75 * softplus(-2.0) + 0.25 * softplus(2.0))
    assert loss.item() == pytest.approx(0.75 * 2.126928 + 0.25 * 0.126928, abs=1e-5)
    with pytest.raises(ValueError, match="loss_type"):
        dpo_loss(pc, pr, zero, zero, loss_type="hinge")


def test_rrhf_loss_by_hand():
    from rayrlhf.algo.losses import rrhf_loss

    # One list of 3 responses ranked 0 > 1 > 2, response lengths 2, 1, 2 (all tokens of the mask).
    lp = torch.tensor([[-1.0, -3.0], [-1.0, 0.0], [-0.5, -0.5]])
    mask = torch.tensor([[1.0, 1.0], [1.0, 0.0], [1.0, 1.0]])
    better, worse, best = torch.tensor([0, 0, 1]), torch.tensor([1, 2, 2]), torch.tensor([0])
    # p = -4/2 = -2, -1/1 = -1, -1/2 = -0.5. Hinges: max(0, -1 - -2) = 1, max(0, -0.5 - -2) = 1.5,
    # max(0, -0.5 - -1) = 0.5: rank 3. SFT on the best: 4 / 2 = 2.
    loss, st = rrhf_loss(lp, mask, better, worse, best)
    assert loss.item() == pytest.approx(5.0)
    assert st["rank_sum"].item() == pytest.approx(3.0) and st["sft_sum"].item() == pytest.approx(2.0)
    assert st["correct"].item() == 0.0
    loss, _ = rrhf_loss(lp, mask, better, worse, best, rank_weight=2.0, sft_weight=0.5, num_lists=4)
    assert loss.item() == pytest.approx((2.0 * 3.0 + 0.5 * 2.0) / 4)
    # length_penalty 0: summed logprobs -4, -1, -1: hinges 3, 3, 0
    _, st = rrhf_loss(lp, mask, better, worse, best, length_penalty=0.0)
    assert st["rank_sum"].item() == pytest.approx(6.0)
    # In the right order, only the SFT term is left.
    loss, st = rrhf_loss(lp.flip(0), mask.flip(0), better, worse, best)
    assert st["rank_sum"].item() == 0.0 and st["correct"].item() == 3.0
    assert loss.item() == pytest.approx(0.5)


def test_the_best_of_a_list_is_the_one_never_ranked_below():
    from rayrlhf.trainer.rrhf import best_of_list

    assert best_of_list([0, 0, 1], [1, 2, 2]) == 0
    assert best_of_list([2, 2, 0], [0, 1, 1]) == 2
    with pytest.raises(ValueError, match="a ranking has a best response"):
        best_of_list([0, 1], [1, 0])
