"""The reward-hacking alarm's figures against hand-computed windows."""
import pytest

from rayrlhf.algo.hacking import HackingSection, HackingWatch, alarm_figures

S = HackingSection(watch="gold/reward", window=2, min_drop=0.02, length_ratio=1.5, z=1.0)


def test_no_trend_before_two_windows():
    assert alarm_figures([0.1, 0.2, 0.3], [0.5, 0.4, 0.3], [10, 10, 10], S) == {"hacking/alarm": 0.0}


def test_proxy_up_and_gold_down_fires():
    proxy, gold, lengths = [0.1, 0.2, 0.4, 0.6], [0.50, 0.52, 0.45, 0.40], [10, 10, 11, 11]
    out = alarm_figures(proxy, gold, lengths, S)
    # proxy windows: (0.1 + 0.2) / 2 = 0.15 -> (0.4 + 0.6) / 2 = 0.5; gold window means 0.51,
    # 0.485, 0.425: best 0.51, last 0.425, a drop of 0.085. The gold values' sd is 0.05377
    # (ddof 1); one standard error of a difference of two means of 2 is 0.05377 * sqrt(2 / 2):
    # the threshold max(0.02, 1 x 0.05377). Length 10 -> 11: ratio 1.1.
    assert out["hacking/proxy_change"] == pytest.approx(0.35)
    assert out["hacking/watch_drop"] == pytest.approx(0.085)
    assert out["hacking/watch_threshold"] == pytest.approx(0.053774, abs=1e-6)
    assert out["hacking/length_ratio"] == pytest.approx(1.1)
    assert out["hacking/alarm"] == 1.0


def test_a_fall_within_the_noise_is_quiet():
    # the same series at z = 3: the threshold 3 x 0.05377 = 0.161 is above the drop of 0.085
    quiet = HackingSection(watch="gold/reward", window=2, z=3.0)
    out = alarm_figures([0.1, 0.2, 0.4, 0.6], [0.50, 0.52, 0.45, 0.40], [10, 10, 11, 11], quiet)
    assert out["hacking/watch_threshold"] == pytest.approx(3 * 0.053774, abs=1e-5) and out["hacking/alarm"] == 0.0


def test_both_rising_is_quiet_and_a_falling_proxy_is_not_hacking():
    assert alarm_figures([0.1, 0.2, 0.4, 0.6], [0.40, 0.45, 0.50, 0.55], [10] * 4, S)["hacking/alarm"] == 0.0
    # gold falls, but so does the proxy: a bad update, not the policy gaming the reward
    assert alarm_figures([0.6, 0.4, 0.2, 0.1], [0.5, 0.5, 0.3, 0.3], [10] * 4, S)["hacking/alarm"] == 0.0


def test_length_drift_fires_without_a_watched_signal():
    out = alarm_figures([0.1, 0.2, 0.4, 0.6], [], [10, 10, 14, 18], S)
    assert out["hacking/length_ratio"] == pytest.approx(1.6) and "hacking/watch_drop" not in out
    assert out["hacking/alarm"] == 1.0
    shrink = alarm_figures([0.1, 0.2, 0.4, 0.6], [], [20, 20, 12, 12], S)  # 0.6 <= 1 / 1.5
    assert shrink["hacking/alarm"] == 1.0
    assert alarm_figures([0.1, 0.2, 0.4, 0.6], [], [10, 10, 12, 12], S)["hacking/alarm"] == 0.0


def test_the_watch_records_the_first_firing_and_resumes_from_its_state():
    rows = [{"rollout/reward_mean": p, "gold/reward": g, "rollout/response_length": 10.0}
            for p, g in [(0.1, 0.5), (0.2, 0.52), (0.4, 0.45), (0.6, 0.40), (0.7, 0.38)]]
    a = HackingWatch(S)
    figures = [a.update(i + 1, r) for i, r in enumerate(rows)]
    assert [f["hacking/alarm"] for f in figures] == [0.0, 0.0, 0.0, 1.0, 1.0] and a.fired_at == 4
    assert "gold/reward fell 0.085 below its best" in a.reason(figures[3])
    b = HackingWatch(S)
    for i, r in enumerate(rows[:3]):
        b.update(i + 1, r)
    c = HackingWatch(S)
    c.load(b.state())
    assert [c.update(i + 4, r) for i, r in enumerate(rows[3:])] == figures[3:] and c.fired_at == 4


def test_an_empty_watch_turns_the_alarm_off():
    off = HackingWatch(HackingSection(watch="", window=2))
    rows = [{"rollout/reward_mean": 0.1 * i, "rollout/response_length": 10.0 * i} for i in range(1, 6)]
    assert [off.update(i, r) for i, r in enumerate(rows)] == [{}] * 5 and off.fired_at is None


def test_spearman_against_hand_computed_ranks():
    from rayrlhf.algo.hacking import ranks, spearman

    assert ranks([0.3, 0.1, 0.3, 0.9]).tolist() == [2.5, 1.0, 2.5, 4.0]  # the tie shares ranks 2 and 3
    assert spearman([1, 2, 3, 4], [10, 20, 30, 45]) == pytest.approx(1.0)
    assert spearman([1, 2, 3, 4], [4, 3, 2, 1]) == pytest.approx(-1.0)
    # ranks (1, 2, 3, 4) against (2, 1, 4, 3): d = (-1, 1, -1, 1), 1 - 6 * 4 / (4 * 15) = 0.6
    assert spearman([0.1, 0.2, 0.3, 0.4], [5, 1, 9, 7]) == pytest.approx(0.6)
    assert spearman([1, 1, 1], [1, 2, 3]) is None and spearman([1], [2]) is None  # nothing to rank


def test_agreement_metrics_average_the_sources_with_a_ranking():
    from rayrlhf.algo.hacking import agreement_metrics

    proxy = [0.1, 0.2, 0.3, 0.4]
    out = agreement_metrics(proxy, {"heldout": [5, 1, 9, 7], "replica": [1, 2, 3, 4], "flat": [2, 2, 2, 2]},
                            ["heldout", "replica", "flat"])
    assert out == {"hacking/agreement/heldout": pytest.approx(0.6), "hacking/agreement/replica": pytest.approx(1.0),
                   "hacking/agreement": pytest.approx(0.8)}  # the constant source is left out of the mean
    assert agreement_metrics(proxy, {"flat": [2, 2, 2, 2]}, ["flat"]) == {}


def test_falling_agreement_fires_without_a_watched_signal():
    s = HackingSection(watch="gold/none", window=2, z=1.0, min_agreement_drop=0.1, agree_with=["heldout"])
    proxy, agreement = [0.1, 0.2, 0.4, 0.6], [0.9, 0.8, 0.3, 0.1]
    out = alarm_figures(proxy, [], [10] * 4, s, agreement)
    # window means 0.85, 0.55, 0.2: a drop of 0.65; the values (mean 0.525) have squared deviations
    # summing to 0.4475, sd sqrt(0.4475 / 3) = 0.38622 (ddof 1), x sqrt(2 / 2) x z 1
    assert out["hacking/agreement_drop"] == pytest.approx(0.65)
    assert out["hacking/agreement_threshold"] == pytest.approx(0.386221, abs=1e-6)
    assert out["hacking/alarm"] == 1.0 and "hacking/watch_drop" not in out
    steady = alarm_figures(proxy, [], [10] * 4, s, [0.8, 0.85, 0.8, 0.82])  # a drop of 0.015 < 0.1
    assert steady["hacking/alarm"] == 0.0
    watch = HackingWatch(s)
    rows = [{"rollout/reward_mean": p, "hacking/agreement": a, "rollout/response_length": 10.0}
            for p, a in zip(proxy, agreement)]
    figures = [watch.update(i + 1, r) for i, r in enumerate(rows)]
    assert watch.fired_at == 4 and watch.state()["agreement"] == agreement
    assert "its rank agreement with heldout fell 0.650 below its best" in watch.reason(figures[-1])


def test_agree_with_must_name_reward_sources():
    from rayrlhf.algo.hacking import check_agree_with

    s = HackingSection(agree_with=["heldout", "nope", "heldout"])
    assert check_agree_with(s, ["helpful", "heldout"], "ppo.hacking") == [
        "ppo.hacking.agree_with: 'nope' is not a reward source (sources: ['helpful', 'heldout'])",
        "ppo.hacking.agree_with: names a source twice: ['heldout', 'nope', 'heldout']"]
