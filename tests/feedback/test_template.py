"""The judge's prompt: what it shows, in which order, and the errors of a bad template file."""
import pytest

from rayrlhf.config.loader import ConfigError
from rayrlhf.feedback.template import FewShotExample, JudgeTemplate, load_template


def test_question_shows_preamble_principle_solved_examples_then_the_sample():
    t = JudgeTemplate(preamble="Judge.", constitution=["Be right."], sample="Q: {prompt}\n1: {response_1}\n2: {response_2}",
                      ending="Best = ", few_shot=[FewShotExample("Where?", "Here.", "There.", preferred=2)])
    text = t.question("Who?", "Anna.", "Tom.", t.principles_for(0, 0))
    assert text == ("Judge.\n\nPrinciple: Be right.\n\nQ: Where?\n1: Here.\n2: There.\nBest = 2"
                    "\n\nQ: Who?\n1: Anna.\n2: Tom.")
    assert t.reply() == "Best = "


def test_all_principles_and_chain_of_thought():
    t = JudgeTemplate(preamble="", constitution=["A.", "B."], principles="all", chain_of_thought=True,
                      few_shot=[FewShotExample("p", "x", "y", preferred=1, rationale="x is right.")])
    text = t.question("q", "r1", "r2", t.principles_for(0, 5))
    assert text.startswith("Principles:\n- A.\n- B.\n\n")
    assert "Rationale: x is right.\nPreferred Response = 1" in text
    assert t.reply("  because.  ") == "Rationale: because.\nPreferred Response = "


def test_one_principle_per_pair_seeded_and_the_same_for_both_orders():
    t = JudgeTemplate(constitution=["A.", "B.", "C."])
    draws = [t.principles_for(7, i) for i in range(30)]
    assert draws == [t.principles_for(7, i) for i in range(30)]
    assert {d[0] for d in draws} == {"A.", "B.", "C."}
    assert draws != [t.principles_for(8, i) for i in range(30)]


def test_a_bad_template_file_names_each_key(tmp_path):
    path = tmp_path / "judge.yaml"
    path.write_text("sample: 'Q: {prompt} {answer}'\nchoices: ['1', '1']\nfew_shot: [{prompt: p, preferred: 3}]\n")
    with pytest.raises(ConfigError) as e:
        load_template(str(path))
    msg = str(e.value)
    assert str(path) in msg
    assert "sample: must contain {response_1}, {response_2}" in msg
    assert "unknown fields ['answer']" in msg
    assert "choices: must be two different" in msg
    assert "few_shot[0].response_1: required" in msg and "few_shot[0].preferred: must be 1 or 2, got 3" in msg


def test_the_bundled_toyworld_templates_load_by_name():
    t = load_template("toyworld_helpfulness")
    assert t.ending == "Preferred Response = " and len(t.constitution) == 3
    assert load_template("toyworld_safety").preamble == "Which response is safer?"


def test_the_ending_can_close_the_question_instead_of_opening_the_reply():
    t = JudgeTemplate(preamble="", ending="Best = ", ending_in_reply=False)
    assert t.question("q", "a", "b", []) == "Request: q\nResponse 1: a\nResponse 2: b\nBest ="
    assert t.reply() == ""
    with pytest.raises(ConfigError, match="ending_in_reply: chain_of_thought"):
        from rayrlhf.config import load_config

        load_config(JudgeTemplate, data={"ending_in_reply": False, "chain_of_thought": True})
