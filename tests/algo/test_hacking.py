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
