"""Rule-based reward functions against hand-counted cases."""
import pytest

from rayrlhf.actors.reward import FunctionReward
from rayrlhf.rules import format_check, length_penalty, repeated_sentence_penalty


def test_length_penalty_counts_words_beyond_the_budget():
    assert length_penalty("q", "The red key is in the kitchen.", max_words=10) == 0.0  # 7 words
    # "That is a good question." (5) + "The red key is in the kitchen." (7) = 12 words: 2 over 10
    assert length_penalty("q", "That is a good question. The red key is in the kitchen.", max_words=10,
                          per_word=0.1) == pytest.approx(-0.2)
    assert length_penalty("q", "I can't help.", max_words=2, per_word=1.0) == pytest.approx(-1.0)  # can't is one


def test_repeated_sentences_and_format():
    text = "That is a good question. The key is here. That is a good question!"
    assert repeated_sentence_penalty("q", text) == -1.0
    assert repeated_sentence_penalty("q", "One. Two.") == 0.0
    assert format_check("q", "  leading space", pattern=r"^\S") == -1.0
    assert format_check("q", "Fine.", pattern=r"^\S") == 0.0


def test_function_source_passes_its_arguments():
    src = FunctionReward("brevity", "rayrlhf.rules:length_penalty", {"max_words": 3, "per_word": 0.5})
    prompts = [[{"role": "user", "content": "Where is it?"}]]
    assert src.score(prompts, ["one two three four five"]) == [pytest.approx(-1.0)]
