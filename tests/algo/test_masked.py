import math

import pytest
import torch

from rayrlhf.algo.masked import masked_mean, masked_sum, masked_var, masked_whiten

X = torch.tensor([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0]])
MASK = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])  # selects 1, 2, 4


def test_masked_sum_and_mean():
    # sum = 1 + 2 + 4 = 7; per row: [1 + 2, 4] = [3, 4]
    assert masked_sum(X, MASK).item() == pytest.approx(7.0)
    torch.testing.assert_close(masked_sum(X, MASK, dim=1), torch.tensor([3.0, 4.0]))
    # mean = 7 / 3; per row: [3 / 2, 4 / 1]
    assert masked_mean(X, MASK).item() == pytest.approx(7.0 / 3.0)
    torch.testing.assert_close(masked_mean(X, MASK, dim=1), torch.tensor([1.5, 4.0]))


def test_bool_mask_matches_float_mask():
    assert masked_mean(X, MASK.bool()).item() == pytest.approx(7.0 / 3.0)


def test_empty_row_mean_is_zero_not_nan():
    mask = torch.tensor([[1.0, 1.0, 0.0], [0.0, 0.0, 0.0]])
    torch.testing.assert_close(masked_mean(X, mask, dim=1), torch.tensor([1.5, 0.0]))


def test_padding_with_inf_does_not_poison_value_or_grad():
    x = torch.tensor([[1.0, 2.0, -math.inf]], requires_grad=True)
    mask = torch.tensor([[1.0, 1.0, 0.0]])
    out = masked_mean(x, mask)
    out.backward()
    assert out.item() == pytest.approx(1.5)
    # d mean / d x = mask / 2
    torch.testing.assert_close(x.grad, torch.tensor([[0.5, 0.5, 0.0]]))


def test_masked_var():
    # entries 1, 2, 4: mean 7/3, deviations -4/3, -1/3, 5/3, squares sum 42/9 = 14/3
    # biased = 14/9, unbiased = (14/3) / 2 = 7/3
    assert masked_var(X, MASK, unbiased=False).item() == pytest.approx(14.0 / 9.0)
    assert masked_var(X, MASK).item() == pytest.approx(7.0 / 3.0)


def test_unbiased_var_of_one_entry_raises():
    with pytest.raises(ValueError, match="at least 2"):
        masked_var(X, torch.tensor([[1.0, 0.0, 0.0], [0.0, 0.0, 0.0]]))


def test_masked_whiten():
    # mean 7/3, unbiased std sqrt(7/3) = 1.5275; padding stays 0
    std = math.sqrt(7.0 / 3.0)
    expected = torch.tensor(
        [[(1 - 7 / 3) / std, (2 - 7 / 3) / std, 0.0], [(4 - 7 / 3) / std, 0.0, 0.0]]
    )  # [[-0.8729, -0.2182, 0], [1.0911, 0, 0]]
    torch.testing.assert_close(masked_whiten(X, MASK), expected)


def test_masked_whiten_keep_mean():
    std = math.sqrt(7.0 / 3.0)
    expected = torch.tensor(
        [
            [(1 - 7 / 3) / std + 7 / 3, (2 - 7 / 3) / std + 7 / 3, 0.0],
            [(4 - 7 / 3) / std + 7 / 3, 0.0, 0.0],
        ]
    )
    torch.testing.assert_close(masked_whiten(X, MASK, shift_mean=False), expected)
