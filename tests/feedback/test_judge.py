"""The judge as a plain class (no Ray): its label is sigmoid(lp("1") - lp("2")) of the model's
next token, both orders are scored with the responses really swapped, and bad templates or
over-long prompts stop with the pair named."""
import math

import pytest
import torch

from rayrlhf.data.formats import read_records
from rayrlhf.data.tokenize import render_prompt
from rayrlhf.feedback.judge import Judge, reply_ids
from rayrlhf.feedback.template import JudgeTemplate


@pytest.fixture(scope="module")
def pairs(judge_world):
    return read_records(f"{judge_world}/data/pref_helpfulness_train.jsonl", "preference").records[:5]


def _args(records):
    return [r.prompt for r in records], [r.chosen for r in records], [r.rejected for r in records]


def test_labels_are_the_models_next_token_probabilities_in_both_orders(hf_judge, pairs):
    t, tok = JudgeTemplate(constitution=["Be right."]), hf_judge.tokenizer
    labels = Judge(t, tok, hf_judge.choice_logprobs).label(*_args(pairs))
    one, two = tok.encode(t.ending + "1", add_special_tokens=False)[-1], tok.encode(t.ending + "2", add_special_tokens=False)[-1]
    for i, r in enumerate(pairs):
        for first, second, p in ((r.chosen, r.rejected, labels.p_ab[i]), (r.rejected, r.chosen, labels.p_ba[i])):
            question = t.question(r.prompt[0]["content"], first, second, ["Be right."])
            ids = render_prompt(tok, [{"role": "user", "content": question}]) + tok.encode(t.ending, add_special_tokens=False)
            with torch.no_grad():
                lp = torch.log_softmax(hf_judge.model(input_ids=torch.tensor([ids])).logits[0, -1].double(), -1)
            assert float(p) == pytest.approx(1 / (1 + math.exp(-(lp[one] - lp[two]).item())), abs=1e-5)
        assert float(labels.p_a[i]) == pytest.approx((float(labels.p_ab[i]) + 1 - float(labels.p_ba[i])) / 2)
    assert ((labels.mass > 0) & (labels.mass < 1)).all()


def _keyword_judge(tok, word):
    """A stand-in judge that prefers whichever response holding ``word`` is shown first, 9 to 1,
    and always leans 60:40 toward position 1 otherwise."""
    def choice_logprobs(seqs, choices):
        out = []
        for s in seqs:
            text = tok.decode(s)
            r1 = text.split("Response 1: ")[1].split("Response 2: ")[0]
            r2 = text.split("Response 2: ")[1]
            p1 = 0.9 if word in r1 and word not in r2 else 0.1 if word in r2 and word not in r1 else 0.6
            out.append([math.log(p1 * 0.5), math.log((1 - p1) * 0.5)])
        return out
    return choice_logprobs


def test_both_orders_swap_the_responses_and_debiasing_removes_the_lean(hf_judge):
    tok, t = hf_judge.tokenizer, JudgeTemplate()
    prompts = [[{"role": "user", "content": "Where is the red key?"}]] * 2
    a, b = ["In the kitchen.", "The key."], ["In the hall.", "A key."]
    labels = Judge(t, tok, _keyword_judge(tok, "kitchen")).label(prompts, a, b)
    torch.testing.assert_close(labels.p_ab, torch.tensor([0.9, 0.6], dtype=torch.float64))
    torch.testing.assert_close(labels.p_ba, torch.tensor([0.1, 0.6], dtype=torch.float64))
    torch.testing.assert_close(labels.p_a, torch.tensor([0.9, 0.5], dtype=torch.float64))
    torch.testing.assert_close(labels.mass, torch.tensor([0.5, 0.5], dtype=torch.float64))
    first = Judge(t, tok, _keyword_judge(tok, "kitchen")).label(prompts, a, b, both=False)
    torch.testing.assert_close(first.p_a, first.p_ab)
    assert torch.isnan(first.p_ba).all()


def test_chain_of_thought_scores_after_the_judges_own_rationale(hf_judge):
    tok = hf_judge.tokenizer
    t = JudgeTemplate(chain_of_thought=True, max_rationale_tokens=6)
    seen = []

    def generate(ids):
        seen.extend(tok.decode(x) for x in ids)
        return ["the kitchen is right. Preferred Response = 1 extra"] * len(ids)

    def choice_logprobs(seqs, choices):
        seen.extend(tok.decode(s) for s in seqs)
        return hf_judge.choice_logprobs(seqs, choices)

    labels = Judge(t, tok, choice_logprobs, generate=generate).label(
        [[{"role": "user", "content": "Where is the red key?"}]], ["In the kitchen."], ["In the hall."])
    assert all(s.endswith("Rationale:") for s in seen[:2])
    assert seen[2].endswith("Rationale: the kitchen is right.\nPreferred Response = ")  # cut at its own ending
    assert labels.rationales == [["the kitchen is right.", "the kitchen is right."]]


def test_choices_that_are_not_one_token_each_are_refused(hf_judge):
    t = JudgeTemplate(choices=["Response A is better", "Response B"])
    with pytest.raises(ValueError, match="does not end in one token per choice"):
        reply_ids(hf_judge.tokenizer, t, t.reply())


def test_a_prompt_over_the_engines_context_names_the_pair(hf_judge, pairs):
    judge = Judge(JudgeTemplate(), hf_judge.tokenizer, hf_judge.choice_logprobs, max_len=40)
    with pytest.raises(ValueError, match=r"prefs.jsonl:7: the judge's prompt needs \d+ tokens, over .*max_model_len 40"):
        judge.label(*_args(pairs[:1]), where=["prefs.jsonl:7"])
