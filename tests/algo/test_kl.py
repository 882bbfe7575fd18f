import math

import pytest
import torch

from rayrlhf.algo.kl import (
    AdaptiveKLController,
    FixedKLController,
    kl_penalty,
    make_kl_controller,
)

# Token 0: p = 1/2, q = 1/4 -> log p - log q = log 2
# Token 1: p = 1/4, q = 1/2 -> log p - log q = -log 2
LOGPROBS = torch.tensor([[math.log(0.5), math.log(0.25)]])
REF_LOGPROBS = torch.tensor([[math.log(0.25), math.log(0.5)]])
LOG2 = math.log(2.0)


@pytest.mark.parametrize(
    "kind, expected",
    [
        ("k1", [LOG2, -LOG2]),  # [0.6931, -0.6931]
        ("k2", [0.5 * LOG2**2, 0.5 * LOG2**2]),  # [0.2402, 0.2402]
        # k3 = e^{q-p} - (q-p) - 1: token 0 q-p = -log 2 -> 1/2 + log 2 - 1 = 0.1931
        #                           token 1 q-p = log 2 -> 2 - log 2 - 1 = 0.3069
        ("k3", [0.5 + LOG2 - 1.0, 2.0 - LOG2 - 1.0]),
        ("abs", [LOG2, LOG2]),
    ],
)
def test_kl_estimators_by_hand(kind, expected):
    torch.testing.assert_close(kl_penalty(LOGPROBS, REF_LOGPROBS, kind), torch.tensor([expected]))


@pytest.mark.parametrize("kind", ["k1", "k2", "k3", "abs"])
def test_kl_is_zero_for_identical_policies(kind):
    assert torch.equal(kl_penalty(LOGPROBS, LOGPROBS, kind), torch.zeros(1, 2))


def test_unknown_kind_raises():
    with pytest.raises(ValueError, match="k4"):
        kl_penalty(LOGPROBS, REF_LOGPROBS, "k4")


def test_adaptive_controller_updates_by_hand():
    ctl = AdaptiveKLController(init_kl_coef=0.1, target=6.0, horizon=10000)
    # KL 9: e = clip(9/6 - 1 = 0.5, -0.2, 0.2) = 0.2; beta = 0.1 * (1 + 0.2 * 256 / 10000)
    ctl.update(current_kl=9.0, n_steps=256)
    assert ctl.value == pytest.approx(0.100512)
    # KL 5.4: e = 5.4/6 - 1 = -0.1; beta = 0.100512 * (1 - 0.1 * 1000 / 10000) = 0.09950688
    ctl.update(current_kl=5.4, n_steps=1000)
    assert ctl.value == pytest.approx(0.09950688)


def test_adaptive_controller_state_round_trip():
    ctl = AdaptiveKLController(0.1, 6.0, 10000)
    ctl.update(9.0, 256)
    restored = AdaptiveKLController(0.5, 1.0, 1.0)
    restored.load_state_dict(ctl.state_dict())
    assert restored.value == ctl.value
    restored.update(9.0, 256)
    ctl.update(9.0, 256)
    assert restored.value == ctl.value


def test_fixed_controller_does_not_move():
    ctl = FixedKLController(0.05)
    ctl.update(100.0, 1000)
    assert ctl.value == 0.05
    other = FixedKLController(1.0)
    other.load_state_dict(ctl.state_dict())
    assert other.value == 0.05


def test_make_kl_controller():
    assert isinstance(make_kl_controller("fixed", kl_coef=0.1), FixedKLController)
    ctl = make_kl_controller("adaptive", init_kl_coef=0.2, target=6.0, horizon=10000)
    assert isinstance(ctl, AdaptiveKLController) and ctl.value == 0.2
    with pytest.raises(ValueError, match="pid"):
        make_kl_controller("pid", kl_coef=0.1)
