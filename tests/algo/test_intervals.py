"""Percentile-bootstrap intervals over prompts, against distributions enumerated by hand."""
import numpy as np
import pytest

from rayrlhf.algo.intervals import (bootstrap_means, interval, interval_keys, is_interval_key, paired_interval,
                                    per_prompt_means)


def test_per_prompt_means_groups_consecutive_samples():
    assert per_prompt_means([1, 2, 3, 4, 5, 6], 2).tolist() == [1.5, 3.5, 5.5]
    assert per_prompt_means([1, 2, 3, 4, 5, 6], 3).tolist() == [2.0, 5.0]
    with pytest.raises(ValueError, match="groups of 4"):
        per_prompt_means([1, 2, 3, 4, 5, 6], 4)


def test_every_resample_has_the_same_mean():
    # Equal values, or one prompt: every resample's mean is that value, so is the interval.
    assert interval([0.25] * 5) == (0.25, 0.25, 0.25)
    assert interval([0.75], level=0.5, resamples=10) == (0.75, 0.75, 0.75)


def test_two_prompts():
    # Values 0 and 1: a resample of two prompts has mean 0, 1/2 or 1 with probabilities 1/4, 1/2, 1/4.
    # 95%: the 2.5% and 97.5% quantiles fall in the masses at 0 and at 1; 40%: both the 30% and
    # 70% quantiles fall in the mass at 1/2 (which spans 25% to 75%).
    assert interval([0.0, 1.0], 0.95, 10000) == (0.5, 0.0, 1.0)
    assert interval([0.0, 1.0], 0.40, 10000) == (0.5, 0.5, 0.5)
    means = bootstrap_means([0.0, 1.0], 10000, seed=0)
    assert sorted(set(means.tolist())) == [0.0, 0.5, 1.0]
    assert np.mean(means == 0.5) == pytest.approx(0.5, abs=0.02)


def test_three_prompts():
    # Values 0, 0, 1: a resample's mean is j/3 with j ~ Binomial(3, 1/3): probabilities 8/27, 12/27,
    # 6/27, 1/27, so the distribution function is 0.296, 0.741, 0.963, 1 at 0, 1/3, 2/3, 1.
    # 90%: the 5% quantile is 0 and the 95% quantile 2/3; 95%: the 97.5% quantile is 1.
    mean, low, high = interval([0.0, 0.0, 1.0], 0.90, 10000)
    assert (mean, low, high) == (pytest.approx(1 / 3), 0.0, pytest.approx(2 / 3))
    assert interval([0.0, 0.0, 1.0], 0.95, 10000)[1:] == (0.0, 1.0)
    means = bootstrap_means([0.0, 0.0, 1.0], 10000, seed=0)
    for j, p in enumerate((8 / 27, 12 / 27, 6 / 27, 1 / 27)):
        assert np.mean(np.isclose(means, j / 3)) == pytest.approx(p, abs=0.02)


def test_paired_difference_against_unpaired():
    # After is before + 1/8 on every prompt: every resample of the differences has mean 1/8, so the
    # paired interval is [1/8, 1/8]; resampling the two policies apart mixes in how much the prompts
    # differ from each other and gives an interval around 1/8 that reaches below 0.
    before = np.array([0.0, 0.5, 1.0, 0.25, 0.75, 0.0])
    after = before + 0.125
    assert paired_interval(after, before) == (0.125, 0.125, 0.125)
    unpaired = bootstrap_means(after, 2000, seed=1) - bootstrap_means(before, 2000, seed=2)
    low, high = np.quantile(unpaired, [0.025, 0.975])
    assert low < 0.0 < 0.125 < high
    with pytest.raises(ValueError, match="same prompts"):
        paired_interval(after, before[:-1])


def test_seeded_and_chunked_deterministically():
    values = [0.1, 0.9, 0.4, 0.3, 0.8]
    assert interval(values, seed=3) == interval(values, seed=3)
    assert bootstrap_means(values, 50, seed=3).tolist() != bootstrap_means(values, 50, seed=4).tolist()
    # Resamples are drawn 256 at a time from one seeded stream: asking for more extends, never reshuffles.
    assert bootstrap_means(values, 300, seed=0)[:256].tolist() == bootstrap_means(values, 256, seed=0).tolist()
    mean, low, high = interval(values)
    assert mean == pytest.approx(0.5) and low < 0.5 < high


def test_bad_arguments():
    with pytest.raises(ValueError, match="level"):
        interval([1.0, 2.0], level=1.0)
    with pytest.raises(ValueError, match="no values"):
        interval([])
    with pytest.raises(ValueError, match="resamples"):
        interval([1.0], resamples=0)


def test_interval_key_names():
    keys = interval_keys("eval/gold_reward@safe", 0.5, 0.4, 0.6)
    assert keys == {"eval/gold_reward@safe": 0.5, "eval/gold_reward@safe_ci_low": 0.4,
                    "eval/gold_reward@safe_ci_high": 0.6}
    assert [is_interval_key(k) for k in keys] == [False, True, True]
