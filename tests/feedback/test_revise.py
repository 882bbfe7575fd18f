"""The critique-revision loop over stand-ins: a judge that accepts a revision only when it says
"gently", a policy that writes "gently" only when the judge's reason is in its prompt (or the
request says "kindly"), so every count below is known by hand."""
import json
import math
import re

import pytest

from rayrlhf.feedback.judge import Judge
from rayrlhf.feedback.revise import Item, Reviser
from rayrlhf.feedback.revise_outputs import pair_rows, round_rows, sft_rows, summarize
from rayrlhf.feedback.revise_template import ReviseTemplate
from rayrlhf.feedback.template import JudgeTemplate

REASON = "it must say it gently"


class WordTokenizer:
    """Words and runs of spaces as tokens, ids given on first sight; decode inverts encode."""

    chat_template = None

    def __init__(self):
        self.ids, self.words = {}, []

    def encode(self, text, add_special_tokens=False):
        out = []
        for w in re.findall(r"\S+|\s+", text):
            if w not in self.ids:
                self.ids[w] = len(self.words)
                self.words.append(w)
            out.append(self.ids[w])
        return out

    def __call__(self, text):
        return type("Enc", (), {"input_ids": self.encode(text)})

    def decode(self, ids):
        return "".join(self.words[i] for i in ids)


class World:
    """The stand-ins, recording every prompt they see."""

    def __init__(self, tok, never_accept=False):
        self.tok, self.never_accept, self.seen, self.judge_seen = tok, never_accept, [], []

    def generate(self, ids):
        out = []
        for x in ids:
            text = self.tok.decode(x)
            self.seen.append(text)
            if "Critique request:" in text:
                out.append(" The response is blunt. ")
            else:
                out.append("I will not help, gently." if REASON in text or "kindly" in text else "I will not help.")
        return out

    def choice_logprobs(self, ids, choices):
        rows = []
        for x in ids:
            response = self.tok.decode(x).split("Response: ")[-1]
            ok = "gently" in response and not self.never_accept
            rows.append([math.log(0.1), math.log(0.9)] if ok else [math.log(0.8), math.log(0.2)])
        return rows

    def judge_generate(self, ids):
        self.judge_seen += [self.tok.decode(x) for x in ids]
        return [f" {REASON} "] * len(ids)


TEMPLATE = ReviseTemplate(constitution=["Be kind.", "Be safe."], critique_request="Critique request: {principle}",
                          rejection="Rejected because: {reason}")
JUDGE = JudgeTemplate(kind="direct", preamble="Undesirable?", choices=["yes", "no"], ending="Verdict:",
                      chat=False, ending_in_reply=False)
ITEMS = [Item([{"role": "user", "content": "Say hi kindly."}], "Hi.", {"unsafe": False}, "f.jsonl:1"),
         Item([{"role": "user", "content": "How do I hit the cat?"}], "Hit it.", {"unsafe": True}, "f.jsonl:2"),
         Item([{"role": "user", "content": "Where is the key?"}], "Go away.", {"unsafe": False}, "f.jsonl:3")]


def _reviser(max_rounds, never_accept=False, **kw):
    tok = WordTokenizer()
    world = World(tok, never_accept)
    judge = Judge(JUDGE, tok, world.choice_logprobs, seed=1)
    return Reviser(TEMPLATE, judge, tok, world.generate, world.judge_generate, max_rounds=max_rounds,
                   accept_threshold=0.5, seed=1, **kw), world


def test_the_reason_reaches_the_next_round_and_gets_it_accepted():
    reviser, world = _reviser(max_rounds=3)
    rounds = reviser.run(ITEMS)
    assert [len(r) for r in rounds] == [1, 2, 2]  # "kindly" is fixed at once, the others after the reason
    first, second = rounds[1]
    assert (first.accepted, first.reason, first.p_acceptable) == (False, REASON, pytest.approx(0.2))
    assert (second.accepted, second.reason, second.p_acceptable) == (True, None, pytest.approx(0.9))
    assert first.principle in TEMPLATE.constitution and first.critique == "The response is blunt."
    revision_prompts = [s for s in world.seen if "Critique:" in s]
    assert len(revision_prompts) == 5 and sum(f"Rejected because: {REASON}" in s for s in revision_prompts) == 2
    # round 2 critiques the rejected revision, not the original
    assert any("Response: I will not help.\n\nCritique request:" in s for s in world.seen)
    assert len(world.judge_seen) == 2 and all(TEMPLATE.reason_request in s for s in world.judge_seen)
    assert all("Verdict:" not in s for s in world.judge_seen)


def test_the_bound_stops_items_never_accepted():
    reviser, world = _reviser(max_rounds=2, never_accept=True)
    rounds = reviser.run(ITEMS)
    assert [len(r) for r in rounds] == [2, 2, 2] and not any(r.accepted for rs in rounds for r in rs)
    assert all(r.reason == REASON for rs in rounds for r in rs)
    s = summarize(ITEMS, rounds, {}, "unsafe", 2)
    assert (s["revise/items"], s["revise/accepted"], s["revise/never_accepted"]) == (3, 0, 3)
    assert s["revise/rounds_histogram"] == {"1": 0, "2": 3} and len(round_rows(ITEMS, rounds)) == 6
    assert sft_rows(ITEMS, rounds) == [] and pair_rows(ITEMS, rounds) == ([], 0)


def test_principles_are_seeded_per_item_and_round():
    a, _ = _reviser(max_rounds=2, never_accept=True)
    b, _ = _reviser(max_rounds=2, never_accept=True)
    pa = [[r.principle for r in rs] for rs in a.run(ITEMS, start=5)]
    assert pa == [[r.principle for r in rs] for rs in b.run(ITEMS, start=5)]
    assert pa == [[TEMPLATE.principle(1, 5 + i, k) for k in (1, 2)] for i in range(3)]


def test_outputs_and_summary_by_hand():
    reviser, _ = _reviser(max_rounds=2)
    rounds = reviser.run(ITEMS)
    gold = {"gentle": lambda prompt, response: 1.0 if "gently" in response else 0.0}
    s = summarize(ITEMS, rounds, gold, "unsafe", 2)
    assert (s["revise/items"], s["revise/accepted"], s["revise/accepted_share"]) == (3, 3, 1.0)
    assert s["revise/rounds_histogram"] == {"1": 1, "2": 2} and s["revise/mean_rounds"] == pytest.approx(5 / 3)
    assert s["revise/accepted_at_round"] == {"1": 1, "2": 2}
    assert (s["gold/gentle/original"], s["gold/gentle/accepted_revision"]) == (0.0, 1.0)
    assert (s["revise/items@unsafe"], s["revise/mean_rounds@unsafe"], s["revise/items@not_unsafe"]) == (1, 2.0, 2)
    rows = round_rows(ITEMS, rounds)
    assert [(r["item"], r["round"], r["accepted"]) for r in rows] == [(0, 1, True), (1, 1, False), (1, 2, True),
                                                                      (2, 1, False), (2, 2, True)]
    assert rows[2]["critiqued"] == rows[1]["revision"] == "I will not help."
    sft = sft_rows(ITEMS, rounds)
    assert [r["messages"][-1]["content"] for r in sft] == ["I will not help, gently."] * 3
    assert [r["unsafe"] for r in sft] == [False, True, False] and sft[1]["revise"]["original"] == "Hit it."
    pairs, same = pair_rows(ITEMS, rounds)
    assert same == 0 and [(p["chosen"], p["rejected"]) for p in pairs] == [
        ("I will not help, gently.", o) for o in ("Hi.", "Hit it.", "Go away.")]
    json.dumps(s)


def test_pairs_and_sft_rows_read_back(tmp_path):
    from rayrlhf.data.formats import read_records

    reviser, _ = _reviser(max_rounds=2)
    rounds = reviser.run(ITEMS)
    for name, rows, kind in (("sft", sft_rows(ITEMS, rounds), "sft"), ("pairs", pair_rows(ITEMS, rounds)[0],
                                                                         "preference")):
        path = tmp_path / f"{name}.jsonl"
        path.write_text("".join(json.dumps(r) + "\n" for r in rows))
        result = read_records(str(path), kind)
        assert not result.problems and len(result.records) == 3
        assert result.records[1].meta["unsafe"] is True


def test_a_prompt_too_long_is_named():
    reviser, _ = _reviser(max_rounds=2, max_len=40, max_new_tokens=8)
    with pytest.raises(ValueError, match=r"f.jsonl:1: the revision prompt needs \d+ tokens"):
        reviser.check_lengths(ITEMS)


def test_template_checks():
    assert ReviseTemplate().validate() == ["constitution: required: at least one principle"]
    bad = ReviseTemplate(constitution=["x"], critique_request="Critique.", rejection="{why}")
    problems = bad.validate()
    assert "critique_request: must contain {principle}" in problems
    assert any(p.startswith("rejection: must contain {reason}") for p in problems)


def test_a_pipeline_stage_of_kind_revise(tmp_path):
    import io

    from rayrlhf.config import load_config
    from rayrlhf.config.revise import ReviseConfig
    from rayrlhf.driver.pipeline import PipelineConfig, resolve_pipeline
    from rayrlhf.driver.pipeline_report import print_report

    cfg = load_config(PipelineConfig, data={"run": {"output_dir": str(tmp_path), "name": "p"}, "stages": [
        {"name": "toyworld", "kind": "toyworld"},
        {"name": "clean", "kind": "revise", "config": {
            "policy": {"name_or_path": "{toyworld}/base_model"},
            "data": {"sft": ["{toyworld}/data/sft_train.jsonl"]}, "revise": {"max_rounds": 3}}}]})
    _, run_dir, configs = resolve_pipeline(cfg)
    assert isinstance(configs[1], ReviseConfig) and configs[1].revise.max_rounds == 3
    assert configs[1].data.sft == [f"{run_dir}/toyworld/data/sft_train.jsonl"] and not configs[1].separate_judge
    out = io.StringIO()
    print_report({"clean": {"kind": "revise", "revise/accepted": 3, "revise/items": 4, "revise/mean_rounds": 1.5,
                            "revise/max_rounds": 3, "revise/pairs": 3}}, out=out)
    assert "3/4 responses revised and accepted by the judge in 1.50 rounds on average (at most 3); 3 " in out.getvalue()


def test_responses_sampled_for_a_prompt_file(tmp_path):
    from rayrlhf.config.revise import ReviseDataSection
    from rayrlhf.feedback.revise_run import read_items, sample_responses

    path = tmp_path / "prompts.jsonl"
    path.write_text('{"prompt": "Where is the key?", "unsafe": false}\n{"prompt": "Hit the cat?", "unsafe": true}\n')
    items, sampled = read_items(ReviseDataSection(prompts=[str(path)]))
    assert sampled and [it.response for it in items] == ["", ""] and items[1].meta == {"unsafe": True}
    assert items[1].where.endswith("prompts.jsonl:2")
    tok = WordTokenizer()
    sample_responses(lambda ids: [f" {len(x)} " for x in ids], tok, items)
    assert [it.response for it in items] == [str(len(tok.encode(f"\n\nHuman: {q}\n\nAssistant:")))
                                             for q in ("Where is the key?", "Hit the cat?")]
    reviser, _ = _reviser(max_rounds=1, max_len=10_000, max_new_tokens=8)
    assert [len(r) for r in reviser.run(items)] == [1, 1]
