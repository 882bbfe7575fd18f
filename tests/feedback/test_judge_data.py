"""Demonstrations of judging: pairs rendered as the judge's prompt with the better one's choice
as the answer, in both orders; toyworld writes them from gold-ordered pairs."""
import json

from rayrlhf.data.schema import PreferenceRecord
from rayrlhf.feedback.judge_data import judge_sft_rows
from rayrlhf.feedback.template import JudgeTemplate, load_template

PROMPT = [{"role": "user", "content": "Where is the red key?"}]


def test_each_pair_in_both_orders_answered_by_the_better_ones_position():
    t = JudgeTemplate(preamble="", ending="Best = ", ending_in_reply=False)
    rows = judge_sft_rows(t, [PreferenceRecord(PROMPT, "In the kitchen.", "In the hall.")])
    assert [r["messages"][1]["content"] for r in rows] == ["1", "2"]
    assert rows[0]["messages"][0]["content"] == ("Request: Where is the red key?\nResponse 1: In the kitchen.\n"
                                                 "Response 2: In the hall.\nBest =")
    assert "Response 1: In the hall." in rows[1]["messages"][0]["content"]
    opened = judge_sft_rows(JudgeTemplate(preamble="", ending="Best = "),
                            [PreferenceRecord(PROMPT, "a", "b")], both=False)
    assert len(opened) == 1 and opened[0]["messages"][1]["content"] in ("Best = 1", "Best = 2")


def test_toyworld_writes_gold_ordered_demonstrations(tmp_path):
    from rayrlhf.driver.toyworld_stage import ToyworldConfig, run_toyworld
    from rayrlhf.models.tiny import TinyModelSpec
    from rayrlhf.tasks.toyworld import gold_helpfulness

    info = run_toyworld(ToyworldConfig(out=str(tmp_path / "tw"), n_sft=20, n_pref=60, n_judge=10, n_prompts=8,
                                       n_eval_prompts=4, vocab_size=300,
                                       model=TinyModelSpec(hidden_size=64, num_layers=1, num_heads=2, intermediate_size=64)))
    rows = [json.loads(line) for line in open(info["files"]["judge_helpfulness_sft_train"])]
    assert len(rows) == 2 * 10
    t = load_template("toyworld_helpfulness")
    for first, second in zip(rows[::2], rows[1::2]):
        text = first["messages"][0]["content"]
        request = text.split("Request: ")[1].split("\nResponse 1: ")[0]
        r1 = text.split("Response 1: ")[1].split("\nResponse 2: ")[0]
        r2 = text.split("Response 2: ")[1].split("\n" + t.ending.rstrip())[0]
        better = r1 if first["messages"][1]["content"] == "1" else r2
        worse = r2 if better == r1 else r1
        assert gold_helpfulness(request, better) > gold_helpfulness(request, worse)
        assert second["messages"][1]["content"] != first["messages"][1]["content"]
    assert "judge_safety_sft_eval" in info["files"]
