import math
import random
from collections import Counter

import pytest

from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.tasks.toyworld import Annotator, gold_helpfulness, sample_prompts
from rayrlhf.tasks.toyworld.annotators import MARGIN_THRESHOLDS, margin_level
from rayrlhf.tasks.toyworld.responses import POOL_SAFE, SAFETY_POOL_SAFE, distinct_responses

WHERE = "The red key is in the kitchen. The old map is in the garden. Where is the old map?"
N_PAIRS = 3000


def _pairs(preference: str):
    """Pairs drawn the way write_toyworld draws them for this preference set."""
    rng = random.Random(f"test/{preference}")
    unsafe_fraction, safe_mix = (0.25, POOL_SAFE) if preference == "helpfulness" else (0.6, SAFETY_POOL_SAFE)
    return [
        (p.text, *distinct_responses(p, 2, rng, safe_mix))
        for p in sample_prompts(N_PAIRS, rng, unsafe_fraction, distinct=False)
    ]


@pytest.fixture(scope="module", params=["helpfulness", "safety"])
def labelled(request):
    preference = request.param
    pairs = _pairs(preference)
    first, second = Annotator(seed=1, preference=preference), Annotator(seed=2, preference=preference)
    return [(first.compare(*pair), second.compare(*pair)) for pair in pairs]


def test_two_annotators_agree_like_instructgpt_labelers(labelled):
    agreement = sum(a.first_preferred == b.first_preferred for a, b in labelled) / len(labelled)
    assert 0.68 <= agreement <= 0.77


def test_margin_levels_each_hold_a_real_share(labelled):
    shares = Counter(a.margin for a, _ in labelled)
    assert set(shares) == set(MARGIN_LEVELS)
    assert min(shares.values()) / len(labelled) >= 0.10


def test_significantly_better_follows_the_gold_order(labelled):
    significant = [a for a, _ in labelled if a.margin == "significantly better"]
    agree = sum(j.gold_chosen > j.gold_rejected for j in significant) / len(significant)
    assert agree >= 0.90
    # The finest level is close to a coin flip against the gold order.
    negligible = [a for a, _ in labelled if a.margin == "negligibly better"]
    assert sum(j.gold_chosen > j.gold_rejected for j in negligible) / len(negligible) < 0.75


def test_preference_probability_is_bradley_terry():
    a, b = "The old map is in the garden.", "In the garden."  # gold 1.0 and 0.8
    annotator = Annotator(seed=0, temperature=0.25)
    n = 4000
    p_first = sum(annotator.compare(WHERE, a, b).first_preferred for _ in range(n)) / n
    assert p_first == pytest.approx(1 / (1 + math.exp(-0.2 / 0.25)), abs=0.03)  # 0.69


def test_equal_gold_pairs_are_labelled_at_random():
    a, b = "The old map is in the kitchen.", "The old map is in the hall."  # both wrong: 0.15
    annotator = Annotator(seed=0)
    judgements = [annotator.compare(WHERE, a, b) for _ in range(4000)]
    assert sum(j.first_preferred for j in judgements) / 4000 == pytest.approx(0.5, abs=0.03)
    assert all(j.gold_chosen == j.gold_rejected == 0.15 for j in judgements)


def test_judgement_fields_and_determinism():
    a, b = "The old map is in the garden.", "Music makes me happy."
    j1 = [Annotator(seed=5).compare(WHERE, a, b) for _ in range(3)]
    j2 = [Annotator(seed=5).compare(WHERE, a, b) for _ in range(3)]
    assert j1 == j2
    j = j1[0]
    assert {j.chosen, j.rejected} == {a, b}
    assert j.gold_chosen == gold_helpfulness(WHERE, j.chosen)
    assert j.margin in MARGIN_LEVELS


def test_margin_level_thresholds():
    hi, mid, lo = MARGIN_THRESHOLDS
    assert margin_level(hi) == "significantly better"
    assert margin_level(hi - 1e-9) == "better"
    assert margin_level(mid) == "better"
    assert margin_level(lo) == "slightly better"
    assert margin_level(lo - 1e-9) == margin_level(0.0) == "negligibly better"


def test_rank_orders_by_gold_when_noise_vanishes():
    responses = [
        "Music makes me happy.",
        "In the garden.",
        "The old map is in the kitchen.",
        "The old map is in the garden.",
    ]
    ranked = Annotator(seed=0, temperature=1e-6, preference="reward").rank(WHERE, responses)
    assert ranked == [
        "The old map is in the garden.",
        "In the garden.",
        "The old map is in the kitchen.",
        "Music makes me happy.",
    ]
    noisy = Annotator(seed=0, preference="reward")
    draws = [noisy.rank(WHERE, responses) for _ in range(1000)]
    assert all(sorted(d) == sorted(responses) for d in draws)
    firsts = Counter(d[0] for d in draws)
    # Plackett-Luce with scores g / T: P(best first) = e^(1/T) / sum_i e^(g_i/T), g = (1, .8, .15, .05).
    z = sum(math.exp(g / 0.25) for g in (1.0, 0.8, 0.15, 0.05))
    assert firsts["The old map is in the garden."] / 1000 == pytest.approx(math.exp(1 / 0.25) / z, abs=0.04)


def test_annotator_rejects_bad_settings():
    with pytest.raises(ValueError, match="preference"):
        Annotator(preference="honesty")
    with pytest.raises(ValueError, match="temperature"):
        Annotator(temperature=0.0)
