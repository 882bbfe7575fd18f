import math

import pytest
import torch

from rayrlhf.algo.logprobs import entropy_from_logits, token_logprobs

# Position 0: logits [0, 0] -> p = [1/2, 1/2]
# Position 1: logits [log 3, 0] -> p = [3/4, 1/4]
# Position 2: predicts past the end; its logits must be ignored.
LOGITS = torch.tensor([[[0.0, 0.0], [math.log(3.0), 0.0], [100.0, -100.0]]])
INPUT_IDS = torch.tensor([[1, 0, 1]])


def test_token_logprobs_by_hand():
    out = token_logprobs(LOGITS, INPUT_IDS)
    # out[0] = log p_0(token 0) = log 1/2; out[1] = log p_1(token 1) = log 1/4
    assert out.shape == (1, 2)
    torch.testing.assert_close(out, torch.tensor([[math.log(0.5), math.log(0.25)]]))


def test_token_logprobs_three_way_vocab():
    # logits [0, log 2, log 5] -> p = [1/8, 2/8, 5/8]
    logits = torch.tensor([[[0.0, math.log(2.0), math.log(5.0)], [0.0, 0.0, 0.0]]])
    for token, p in [(0, 1 / 8), (1, 2 / 8), (2, 5 / 8)]:
        out = token_logprobs(logits, torch.tensor([[0, token]]))
        assert out.item() == pytest.approx(math.log(p), abs=1e-6)


def test_entropy_by_hand():
    ent = entropy_from_logits(LOGITS)
    # H([1/2, 1/2]) = log 2; H([3/4, 1/4]) = -(3/4 log 3/4 + 1/4 log 1/4) = 0.5623;
    # the third position is (almost) deterministic: H ~ 0
    expected = torch.tensor(
        [[math.log(2.0), -(0.75 * math.log(0.75) + 0.25 * math.log(0.25)), 0.0]]
    )
    torch.testing.assert_close(ent, expected)


def test_low_precision_logits_give_float32():
    out = token_logprobs(LOGITS.bfloat16(), INPUT_IDS)
    assert out.dtype == torch.float32
