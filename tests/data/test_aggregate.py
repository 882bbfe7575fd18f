"""``rayrlhf data aggregate``: majority, mean and group-weighted labels, written as one file."""
import json

import pytest

from rayrlhf.data.aggregate import Weights, annotator_weight, parse_weights
from rayrlhf.data.cli import main
from rayrlhf.data.formats import read_records

GROUPS = "g1=general,g2=general,g3=general,s1=safety"


def msgs(q: int, chosen: str, rejected: str, **extra) -> dict:
    return {"prompt": [{"role": "user", "content": f"q{q}"}],
            "chosen": [{"role": "assistant", "content": chosen}],
            "rejected": [{"role": "assistant", "content": rejected}], **extra}


def _read(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture
def panel(write_jsonl, tmp_path):
    """Three general annotators prefer A on every prompt; the safety annotator prefers B.
    Prompts 1 and 3 are unsafe."""
    unsafe = {1: True, 2: False, 3: True, 4: False}
    general = [msgs(q, f"A{q}", f"B{q}", unsafe=unsafe[q], gold_chosen=0.1, gold_rejected=0.9) for q in unsafe]
    safety = [msgs(q, f"B{q}", f"A{q}", unsafe=unsafe[q]) for q in unsafe]
    files = [write_jsonl(f"{n}.jsonl", general) for n in ("g1", "g2", "g3")] + [write_jsonl("s1.jsonl", safety)]
    weights = tmp_path / "weights.yaml"
    weights.write_text("groups:\n  safety: {tags: [unsafe], weight: 4.0}\ndefault_weight: 1.0\n")
    return files, str(weights)


def test_group_weights_change_the_tagged_prompts_only(panel, tmp_path, capsys):
    files, weights = panel
    majority, weighted = tmp_path / "majority.jsonl", tmp_path / "weighted.jsonl"
    assert main(["aggregate", *files, "--out", str(majority)]) == 0
    assert main(["aggregate", *files, "--method", "weighted", "--groups", GROUPS,
                 "--weights", weights, "--out", str(weighted)]) == 0
    out = capsys.readouterr().out
    assert f"{weighted}: 4 pairs (weighted) from 4 annotators; 0 tied pairs left out; 2 differ from g1's label" in out
    hard, soft = _read(majority), _read(weighted)
    assert [r["chosen"][0]["content"] for r in hard] == ["A1", "A2", "A3", "A4"]
    # Unsafe prompts: safety 4 x B against general 3 x A -> B, p = 4/7. Elsewhere 1 x B, 3 x A -> A, p = 3/4.
    assert [r["chosen"][0]["content"] for r in soft] == ["B1", "A2", "B3", "A4"]
    assert [r["p_chosen"] for r in soft] == [round(4 / 7, 6), 0.75, round(4 / 7, 6), 0.75]
    assert soft[0]["weights"] == {"g1": 1.0, "g2": 1.0, "g3": 1.0, "s1": 4.0}
    assert soft[1]["weights"] == {"g1": 1.0, "g2": 1.0, "g3": 1.0, "s1": 1.0}
    assert hard[0]["p_chosen"] == 0.75 and hard[0]["votes"] == {"g1": 1.0, "g2": 1.0, "g3": 1.0, "s1": 0.0}
    # Columns of the first file come along, gold scores swapped to the new sides.
    assert (soft[0]["gold_chosen"], soft[0]["gold_rejected"], soft[0]["unsafe"]) == (0.9, 0.1, True)
    assert (soft[1]["gold_chosen"], soft[1]["gold_rejected"]) == (0.1, 0.9)
    assert "margin" not in soft[0]
    # The output reads back as explicit preference rows with a soft label, votes in meta.
    result = read_records(str(weighted), "preference")
    assert result.format == "explicit" and not result.problems
    assert result.records[0].chosen == "B1" and result.records[0].p_chosen == round(4 / 7, 6)


def test_mean_of_soft_labels_and_ties_left_out(write_jsonl, tmp_path, capsys):
    a = write_jsonl("a.jsonl", [{"prompt": "q1", "chosen": "A", "rejected": "B", "p_chosen": 0.9},
                                {"prompt": "q2", "chosen": "A", "rejected": "B"}])
    b = write_jsonl("b.jsonl", [{"prompt": "q1", "chosen": "B", "rejected": "A", "p_chosen": 0.6},
                                {"prompt": "q2", "chosen": "B", "rejected": "A"}])
    out = tmp_path / "mean.jsonl"
    assert main(["aggregate", a, b, "--method", "mean", "--out", str(out)]) == 0
    # q1: P(A) = (0.9 + 0.4) / 2 = 0.65. q2: (1 + 0) / 2 = 0.5, a tie: left out and counted.
    rows = _read(out)
    assert len(rows) == 1
    assert (rows[0]["prompt"], rows[0]["chosen"], rows[0]["p_chosen"]) == ("q1", "A", 0.65)
    assert rows[0]["votes"] == {"a": 0.9, "b": 0.4}
    assert "1 tied pairs left out" in capsys.readouterr().out


def test_pairs_some_annotators_missed_are_counted(write_jsonl, tmp_path, capsys):
    a = write_jsonl("a.jsonl", [{"prompt": "q1", "chosen": "A", "rejected": "B"},
                                {"prompt": "q2", "chosen": "A", "rejected": "B"}])
    b = write_jsonl("b.jsonl", [{"prompt": "q1", "chosen": "A", "rejected": "B"}])
    out = tmp_path / "o.jsonl"
    assert main(["aggregate", a, b, "--out", str(out)]) == 0
    text = capsys.readouterr().out
    assert "1 pairs aggregated over fewer than all annotators:" in text
    assert f"  b ({b}): did not label 1 pairs" in text
    assert [r["votes"] for r in _read(out)] == [{"a": 1.0, "b": 1.0}, {"a": 1.0}]


def test_weights_file_is_checked():
    w = parse_weights({"groups": {"safety": {"tags": ["unsafe"], "weight": 3}}}, "w.yaml")
    assert w == Weights({"safety": (frozenset({"unsafe"}), 3.0)}, 1.0)
    assert annotator_weight("safety", {"unsafe"}, w) == 3.0
    assert annotator_weight("safety", set(), w) == 1.0 and annotator_weight(None, {"unsafe"}, w) == 1.0
    with pytest.raises(ValueError, match=r"w.yaml: groups.safety.weight: expected a positive number, found number -1"):
        parse_weights({"groups": {"safety": {"tags": ["unsafe"], "weight": -1}}}, "w.yaml")
    with pytest.raises(ValueError, match=r"w.yaml: groups.safety.tags: expected a non-empty list"):
        parse_weights({"groups": {"safety": {"tags": "unsafe", "weight": 2}}}, "w.yaml")
    with pytest.raises(ValueError, match=r"w.yaml: default: unknown key"):
        parse_weights({"default": 1}, "w.yaml")


def test_bad_tag_column_names_row_and_field(panel, write_jsonl, tmp_path, capsys):
    files, weights = panel
    odd = write_jsonl("s2.jsonl", [msgs(1, "A1", "B1", unsafe=3)])
    out = tmp_path / "o.jsonl"
    assert main(["aggregate", files[0], odd, "--method", "weighted", "--groups", "s2=safety",
                 "--weights", weights, "--out", str(out)]) == 1
    assert f"{odd}:1: unsafe: expected a boolean, a tag or a list of tags" in capsys.readouterr().err
    assert not out.exists()


@pytest.mark.parametrize("extra,message", [
    (["--method", "weighted"], "--method weighted needs --groups and --weights"),
    (["--groups", GROUPS], "--groups and --weights are for --method weighted"),
    (["--method", "weighted", "--groups", "zz=safety", "--weights", "W"], "unknown annotator 'zz'"),
    (["--method", "weighted", "--groups", "g1", "--weights", "W"], "'g1' is not ANNOTATOR=GROUP"),
    (["--method", "weighted", "--groups", GROUPS, "--weights", "missing.yaml"], "--weights: "),
])
def test_bad_usage_exits_2(panel, tmp_path, extra, message, capsys):
    files, weights = panel
    extra = [weights if x == "W" else x for x in extra]
    with pytest.raises(SystemExit) as e:
        main(["aggregate", *files, *extra, "--out", str(tmp_path / "o.jsonl")])
    assert e.value.code == 2
    assert message in capsys.readouterr().err
