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


def test_final_answer_is_the_text_after_the_last_marker():
    from rayrlhf.rules import final_answer

    assert final_answer("  Paris  ") == "Paris"  # no marker: the whole response, stripped
    assert final_answer("I think the answer is Lyon. No, the answer is Paris.") == "Paris."
    assert final_answer("Working: 2 + 3.\nAnswer: 5") == "5"
    assert final_answer("FINAL ANSWER IS: **Paris**") == ": **Paris**"  # punctuation goes in normalising


def test_exact_match_normalises_case_space_and_surrounding_punctuation():
    from rayrlhf.rules import exact_match

    row = {"answer": "Paris"}
    assert exact_match("q", "The answer is Paris.", row) == 1.0
    assert exact_match("q", "Answer: **paris**!", row) == 1.0
    assert exact_match("q", '  "PARIS"  ', row) == 1.0
    assert exact_match("q", "Paris, I think", row) == 0.0  # no marker: the whole text is compared
    assert exact_match("q", "The answer is Lyon.", row) == 0.0
    assert exact_match("q", "The answer is Paris, then Lyon.", row) == 0.0  # inner text counts
    assert exact_match("q", "new york", {"city": " New  York. "}, field="city") == 1.0  # inner spaces collapse
    assert exact_match("q", "no", row, reward=2.0, penalty=-1.0) == -1.0


def test_numeric_match_reads_the_last_number():
    from rayrlhf.rules import last_number, numeric_match

    assert last_number("2 + 3 = 5.") == 5.0  # a trailing period is not a decimal point
    assert last_number("It costs 1,234 dollars") == 1234.0
    assert last_number("half: 1/2") == 0.5
    assert last_number("about -0.25 now") == -0.25
    assert last_number(".5") == 0.5
    assert last_number("none here") is None
    row = {"answer": "5"}
    assert numeric_match("What is 2 + 3?", "2 + 3 = 5.", row) == 1.0
    assert numeric_match("What is 2 + 3?", "5", row) == 1.0
    assert numeric_match("What is 2 + 3?", "The answer is 5.0", row) == 1.0
    assert numeric_match("What is 2 + 3?", "5 or 6", row) == 0.0  # the last number counts
    assert numeric_match("What is 2 + 3?", "five", row) == 0.0
    assert numeric_match("q", "1,000", {"answer": 1000}) == 1.0  # a numeric field as is
    assert numeric_match("q", "0.5", {"answer": "1/2"}) == 1.0
    assert numeric_match("q", "3.14", {"answer": "3.14159"}, rel_tol=1e-2) == 1.0
    assert numeric_match("q", "3.14", {"answer": "3.14159"}) == 0.0
    assert numeric_match("q", "10", {"answer": "9"}, abs_tol=1.0) == 1.0


def test_rules_name_the_missing_field():
    from rayrlhf.rules import exact_match, numeric_match

    with pytest.raises(KeyError, match="'answer'"):
        exact_match("q", "x", {"question_id": 3})
    with pytest.raises(KeyError, match="'gold'"):
        numeric_match("q", "1", {"answer": "1"}, field="gold")
    with pytest.raises(ValueError, match="not a number"):
        numeric_match("q", "1", {"answer": "one"})


def _row_rule(prompt, response, row, bonus=0.0):
    return float(response == row["answer"]) + bonus


def test_function_source_passes_the_prompt_row_to_rules_that_take_it():
    from rayrlhf.actors.reward import takes_row

    assert takes_row(_row_rule) and not takes_row(length_penalty)
    src = FunctionReward("correct", "tests.test_rules:_row_rule", {"bonus": 0.5})
    prompts = [[{"role": "user", "content": "What is 2 + 3?"}]] * 2
    assert src.score(prompts, ["5", "6"], [{"answer": "5"}, {"answer": "5"}]) == [1.5, 0.5]
    bundled = FunctionReward("correct", "rayrlhf.rules:numeric_match")
    assert bundled.score(prompts, ["5", "It is 6."], [{"answer": "5", "id": 1}, {"answer": "6"}]) == [1.0, 1.0]
    # Two-argument rules are called as before, whatever the rows hold.
    old = FunctionReward("brevity", "rayrlhf.rules:length_penalty", {"max_words": 1, "per_word": 1.0})
    assert old.score(prompts, ["one two", "one"], [{"answer": "5"}, {}]) == [-1.0, 0.0]
