import math

import pytest
import torch

from rayrlhf.algo.rewards import (
    combine_linear,
    combine_rewards,
    inverse_sigmoid,
    llama2_safety_gate,
    token_level_rewards,
    whiten_scores,
)


def test_token_level_rewards_by_hand():
    # kl_coef 0.5. Row 0: response at positions 1-2 (prompt left, padding right).
    #   [0, -0.5 * 0.2, -0.5 * 0.3 + 1.0, 0] = [0, -0.1, 0.85, 0]
    # Row 1: response at positions 1-3.
    #   [0, -0.3, -0.35, -0.4 + 2.0] = [0, -0.3, -0.35, 1.6]
    scores = torch.tensor([1.0, 2.0])
    kl = torch.tensor([[0.1, 0.2, 0.3, 0.4], [0.5, 0.6, 0.7, 0.8]])
    mask = torch.tensor([[0, 1, 1, 0], [0, 1, 1, 1]])
    rewards = token_level_rewards(scores, kl, mask, kl_coef=0.5)
    torch.testing.assert_close(
        rewards, torch.tensor([[0.0, -0.1, 0.85, 0.0], [0.0, -0.3, -0.35, 1.6]])
    )


def test_token_level_rewards_empty_row_gets_nothing():
    rewards = token_level_rewards(
        torch.tensor([3.0]), torch.ones(1, 3), torch.zeros(1, 3), kl_coef=0.1
    )
    assert torch.equal(rewards, torch.zeros(1, 3))


def test_combine_linear_by_hand():
    # 0.5 * [1, 2] + 2 * [3, -1] = [6.5, -1]
    scores = {"a": torch.tensor([1.0, 2.0]), "b": torch.tensor([3.0, -1.0])}
    out = combine_linear(scores, {"a": 0.5, "b": 2.0})
    torch.testing.assert_close(out, torch.tensor([6.5, -1.0]))


def test_combine_linear_names_missing_source():
    with pytest.raises(KeyError, match="helpfulness"):
        combine_linear({"safety": torch.zeros(2)}, {"safety": 1.0, "helpfulness": 1.0})


def test_llama2_gate_cases():
    # 0: unsafe prompt -> safety 0.8
    # 1: safe prompt, safety 0.1 < 0.15 -> safety 0.1
    # 2: safe prompt, safety 0.5 -> helpfulness 0.9
    # 3: safe prompt, safety exactly 0.15 is not < 0.15 -> helpfulness 0.9
    helpful = torch.tensor([0.9, 0.9, 0.9, 0.9])
    safety = torch.tensor([0.8, 0.1, 0.5, 0.15])
    unsafe = torch.tensor([True, False, False, False])
    out = llama2_safety_gate(helpful, safety, unsafe, threshold=0.15)
    torch.testing.assert_close(out, torch.tensor([0.8, 0.1, 0.9, 0.9]))


def test_inverse_sigmoid_by_hand():
    # logit(0.5) = 0; logit(0.75) = log 3; 0 and 1 are clamped to eps: logit(1e-6) = -13.8155
    # (float64, since 1 - 1e-6 is not exact in float32)
    out = inverse_sigmoid(torch.tensor([0.5, 0.75, 0.0, 1.0], dtype=torch.float64))
    edge = math.log(1e-6 / (1 - 1e-6))
    expected = torch.tensor([0.0, math.log(3.0), edge, -edge], dtype=torch.float64)
    torch.testing.assert_close(out, expected)


def test_whiten_scores_by_hand():
    # [1, 2, 3]: mean 2, sample variance 1 -> [-1, 0, 1]
    out = whiten_scores(torch.tensor([1.0, 2.0, 3.0]))
    torch.testing.assert_close(out, torch.tensor([-1.0, 0.0, 1.0]))


def test_combine_rewards_llama2_recipe():
    scores = {
        "helpfulness": torch.tensor([0.9, 0.9, 0.9]),
        "safety": torch.tensor([0.8, 0.1, 0.5]),
    }
    unsafe = torch.tensor([True, False, False])
    # gate -> [0.8, 0.1, 0.9]; logit -> [log 4, -log 9, log 9] = [1.3863, -2.1972, 2.1972]
    gated = combine_rewards(scores, "llama2_gate", unsafe=unsafe, transform="inverse_sigmoid")
    torch.testing.assert_close(
        gated, torch.tensor([math.log(4.0), -math.log(9.0), math.log(9.0)])
    )
    # whiten: mean log(4)/3 = 0.4621; deviations [0.9242, -2.6593, 1.7351];
    # sample var (0.8542 + 7.0720 + 3.0107) / 2 = 5.4684, std 2.3385
    # -> [0.3952, -1.1372, 0.7420]
    out = combine_rewards(
        scores, "llama2_gate", unsafe=unsafe, transform="inverse_sigmoid", whiten=True
    )
    torch.testing.assert_close(out, torch.tensor([0.3952, -1.1372, 0.7420]), atol=1e-4, rtol=0)


def test_combine_rewards_gate_without_unsafe_flags():
    scores = {"helpfulness": torch.tensor([0.9, 0.9]), "safety": torch.tensor([0.8, 0.1])}
    torch.testing.assert_close(
        combine_rewards(scores, method="llama2_gate"), torch.tensor([0.9, 0.1])
    )


def test_combine_rewards_linear_and_errors():
    one = {"rm": torch.tensor([1.0, -2.0])}
    torch.testing.assert_close(combine_rewards(one), torch.tensor([1.0, -2.0]))
    two = {"a": torch.tensor([1.0]), "b": torch.tensor([2.0])}
    torch.testing.assert_close(
        combine_rewards(two, weights={"a": 1.0, "b": -1.0}), torch.tensor([-1.0])
    )
    with pytest.raises(ValueError, match="needs weights"):
        combine_rewards(two)
    with pytest.raises(KeyError, match="safety"):
        combine_rewards(one, method="llama2_gate", helpful_key="rm")
    with pytest.raises(ValueError, match="method"):
        combine_rewards(one, method="max")
    with pytest.raises(ValueError, match="transform"):
        combine_rewards(one, transform="tanh")


def test_gate_plus_weighted_rule_sources():
    # helpful [1.0, 2.0], safety [0.9, 0.1] (second below 0.15 -> safety), rule [-0.5, -1.0] x 0.2
    scores = {"helpfulness": torch.tensor([1.0, 2.0]), "safety": torch.tensor([0.9, 0.1]),
              "brevity": torch.tensor([-0.5, -1.0])}
    out = combine_rewards(scores, "llama2_gate", weights={"brevity": 0.2})
    torch.testing.assert_close(out, torch.tensor([1.0 - 0.1, 0.1 - 0.2]))
    # weights naming only the gated sources change nothing
    plain = combine_rewards(scores, "llama2_gate", weights={"helpfulness": 3.0})
    torch.testing.assert_close(plain, torch.tensor([1.0, 0.1]))
