"""Annotators' files joined by pair id, and the report of ``rayrlhf data agreement``."""
import json

import pytest

from rayrlhf.data.cli import main
from rayrlhf.data.panel import join, pair_id, read_annotations
from rayrlhf.data.schema import PreferenceRecord


def row(q: int, chosen: str, rejected: str, **extra) -> dict:
    return {"prompt": f"q{q}", "chosen": chosen, "rejected": rejected, **extra}


# Responses "A<i>" sort before "B<i>": a label "first" means A was preferred.
A_ROWS = [
    row(1, "A1", "B1", margin="significantly better", gold_chosen=0.9, gold_rejected=0.1),
    row(2, "A2", "B2", margin="better", gold_chosen=0.5, gold_rejected=0.5),   # gold tie
    row(3, "A3", "B3", margin="better", gold_chosen=0.2, gold_rejected=0.7),   # against gold
    row(4, "B4", "A4", gold_chosen=0.8, gold_rejected=0.2),                    # with gold
]
B_ROWS = [  # another order, responses listed the other way round where b prefers B
    row(2, "A2", "B2"),
    row(1, "A1", "B1", p_chosen=0.8),
    row(3, "B3", "A3", p_chosen=0.9),
    row(4, "B4", "A4"),
]
C_ROWS = [row(1, "A1", "B1"), row(2, "B2", "A2"), row(3, "B3", "A3")]  # pair 4 not labelled


@pytest.fixture
def panel(write_jsonl):
    return [write_jsonl("a.jsonl", A_ROWS), write_jsonl("b.jsonl", B_ROWS), write_jsonl("c.jsonl", C_ROWS)]


def test_pair_id_ignores_response_order():
    prompt = [{"role": "user", "content": "q"}]
    assert pair_id(PreferenceRecord(prompt, "x", "y")) == pair_id(PreferenceRecord(prompt, "y", "x"))
    assert pair_id(PreferenceRecord(prompt, "x", "y")) != pair_id(PreferenceRecord(prompt, "x", "z"))


def test_join_orients_labels_and_counts_what_is_missing(panel):
    annotators = [read_annotations(path, name)[0] for path, name in zip(panel, "abc")]
    joined, problems = join(annotators)
    assert problems == []
    assert len(joined.order) == 4 and len(joined.common) == 3
    assert joined.missing == {"a": 0, "b": 0, "c": 1}
    b = annotators[1].labels
    p1, p2, p3, p4 = joined.order
    assert [b[p].winner for p in (p1, p2, p3, p4)] == ["first", "first", "second", "second"]
    assert b[p1].p_first == pytest.approx(0.8) and b[p3].p_first == pytest.approx(0.1)
    assert annotators[0].labels[p4].gold == (0.2, 0.8)  # (A4, B4): swapped into sorted order


def test_agreement_report(panel, tmp_path, capsys):
    out = tmp_path / "report.json"
    assert main(["agreement", *panel, "--names", "a,b,c", "--json", str(out)]) == 0
    report = json.loads(out.read_text())
    pairwise = {(r["a"], r["b"]): r for r in report["pairwise"]}
    # a-b on 4 pairs: a = F F F S, b = F F S S -> agree 3/4; p_e = 3/4*1/2 + 1/4*1/2 = 1/2; kappa 0.5.
    assert pairwise["a", "b"]["agreement"] == 0.75 and pairwise["a", "b"]["cohen_kappa"] == 0.5
    # a-c on pairs 1-3: a = F F F, c = F S S -> 1/3; p_e = 1 * 1/3, kappa 0.
    assert pairwise["a", "c"]["pairs"] == 3 and pairwise["a", "c"]["cohen_kappa"] == 0.0
    # b-c: F F S vs F S S -> 2/3; p_e = 2/3*1/3 + 1/3*2/3 = 4/9; kappa = (2/9) / (5/9) = 0.4.
    assert pairwise["b", "c"]["agreement"] == pytest.approx(0.6667) and pairwise["b", "c"]["cohen_kappa"] == 0.4
    # Fleiss on pairs 1-3: P_i = 1, 1/3, 1/3 -> P_bar 5/9; p_F = 2/3 -> P_e = 5/9 -> kappa 0.
    assert report["fleiss"] == {"pairs": 3, "fleiss_kappa": 0.0}
    assert report["pairs_not_labelled"] == {"a": 0, "b": 0, "c": 1}
    # a vs majority of b, c: pair 1 F=F, pair 2 tied, pair 3 F vs S, pair 4 S (b alone) = S.
    assert report["with_majority_of_others"]["a"] == {"pairs": 3, "agreement": 0.6667, "others_tied": 1}
    # a's "significantly better" (pair 1) agrees with b and c; a's "better" pairs 2, 3: 1 of 4.
    assert report["by_margin"]["significantly better"] == {"comparisons": 2, "agreement": 1.0}
    assert report["by_margin"]["better"] == {"comparisons": 4, "agreement": 0.25}
    assert report["by_margin"]["(no margin label)"] == {"comparisons": 14, "agreement": 0.6429}
    assert report["with_gold"]["a"] == {"pairs": 3, "agreement": 0.6667, "gold_ties": 1, "no_gold": 0}
    assert report["with_gold"]["b"]["no_gold"] == 4
    text = capsys.readouterr().out
    assert "3 annotators (a, b, c), 4 pairs, 3 labelled by all" in text
    assert f"c ({panel[2]}): did not label 1 of the pairs" in text
    assert "a vs b: 4 pairs, agreement 75.0%, Cohen's kappa 0.500" in text


def test_one_label_everywhere_says_undefined(write_jsonl, capsys):
    rows = [row(i, f"A{i}", f"B{i}") for i in range(3)]
    files = [write_jsonl("x.jsonl", rows), write_jsonl("y.jsonl", rows)]
    assert main(["agreement", *files]) == 0
    out = capsys.readouterr().out
    assert "x vs y: 3 pairs, agreement 100.0%, Cohen's kappa undefined (undefined: every label is 'first'" in out
    assert "Fleiss' kappa (all annotators, 3 pairs): undefined" in out


def test_ids_join_and_bad_rows_are_reported(write_jsonl, capsys):
    good = write_jsonl("g.jsonl", [row(1, "A", "B", id=7), row(2, "A", "B", id=8)])
    soft = write_jsonl("s.jsonl", [row(1, "A", "B", id=7, p_chosen=1.5), row(2, "A", "B", id=8, p_chosen="x")])
    assert main(["agreement", good, soft]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0] == f"{soft}:1: p_chosen: must be a probability in [0, 1], got number 1.5"
    assert err[1] == f"{soft}:2: p_chosen: must be a probability in [0, 1], got string 'x'"
    assert err[-1] == "2 problems; nothing computed"
    bad = write_jsonl("h.jsonl", [row(1, "A", "B", id=7), row(2, "A", "B", id=8),
                                  row(3, "C", "D", id=10, gold_chosen=1.0), row(4, "C", "D", id=9),
                                  row(4, "D", "C", id=9)])
    assert main(["agreement", good, bad]) == 1
    err = capsys.readouterr().err.splitlines()
    assert err[0].startswith(f"{bad}:3: gold_rejected: missing or null while gold_chosen is given")
    assert err[1] == f"{bad}:5: id: pair '9' is also at line 4; expected each pair once per annotator"
    assert err[-1] == "2 problems; nothing computed"


def test_same_id_other_responses_is_a_problem(write_jsonl, capsys):
    a = write_jsonl("a.jsonl", [row(1, "A", "B", id="p1")])
    b = write_jsonl("b.jsonl", [row(1, "A", "C", id="p1")])
    assert main(["agreement", a, b, "--gold"]) == 1
    err = capsys.readouterr().err
    assert f"{b}:1: id: pair 'p1' has other responses than in {a} line 1" in err
    assert f"{a}:1: gold_chosen: missing or null; --gold needs gold_chosen" in err


@pytest.mark.parametrize("args,message", [
    (["only.jsonl"], "needs at least 2 files"),
    (["x.jsonl", "y.jsonl", "--names", "a"], "--names gives 1 names for 2 files"),
    (["x.jsonl", "y.jsonl", "--names", "a,a"], "repeat or are empty"),
])
def test_bad_usage_exits_2(args, message, capsys):
    with pytest.raises(SystemExit) as e:
        main(["agreement", *args])
    assert e.value.code == 2
    assert message in capsys.readouterr().err


def test_missing_file_says_so(write_jsonl, tmp_path, capsys):
    a = write_jsonl("a.jsonl", [row(1, "A", "B")])
    assert main(["agreement", a, str(tmp_path / "nope.jsonl")]) == 1
    assert "nope.jsonl: cannot read: " in capsys.readouterr().err


def test_files_with_nothing_in_common_say_so(write_jsonl, capsys):
    a = write_jsonl("a.jsonl", [row(1, "A", "B", id="x1")])
    b = write_jsonl("b.jsonl", [row(1, "A", "B")])  # no id: joined by text, so not with x1
    assert main(["agreement", a, b]) == 0
    out = capsys.readouterr().out
    assert "2 annotators (a, b), 2 pairs, 0 labelled by all" in out
    assert "no pair is labelled by every annotator" in out
    assert "a vs b: 0 pairs, agreement n/a, Cohen's kappa undefined (no items)" in out
