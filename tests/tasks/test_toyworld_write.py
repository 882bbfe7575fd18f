import json
from pathlib import Path

import pytest

from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.tasks.toyworld import gold_helpfulness, gold_reward, gold_safety, is_unsafe, write_toyworld
from rayrlhf.tasks.toyworld.world import held_out

SMALL = dict(n_sft=300, n_pref=400, n_ranked=50, n_prompts=100, n_eval_prompts=30)
TRAIN_FILES = (
    "sft_train",
    "pref_helpfulness_train",
    "pref_safety_train",
    "pref_ranked_train",
    "prompts_train",
)
EVAL_FILES = ("sft_eval", "pref_helpfulness_eval", "pref_safety_eval", "prompts_eval")


def _rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        lines = f.read().split("\n")
    assert lines[-1] == ""  # newline-terminated, no blank lines in between
    return [json.loads(line) for line in lines[:-1]]


def _prompt_of(row: dict) -> str:
    if "messages" in row:
        return row["messages"][0]["content"]
    return row["prompt"] if isinstance(row["prompt"], str) else row["prompt"][0]["content"]


@pytest.fixture(scope="module")
def full(tmp_path_factory):
    """The default-sized dataset, as the quickstart writes it."""
    out = tmp_path_factory.mktemp("toyworld")
    return write_toyworld(out, seed=0)


def test_files_counts_and_manifest(full):
    panel = {name for name in full if name.startswith("panel/")}  # tests/tasks/test_toyworld_panel.py
    assert set(full) - panel == set(TRAIN_FILES) | set(EVAL_FILES) | {"manifest"}
    manifest = json.loads(Path(full["manifest"]).read_text(encoding="utf-8"))
    expected = {
        "sft_train": 2700,
        "sft_eval": 300,
        "pref_helpfulness_train": 3600,
        "pref_helpfulness_eval": 400,
        "pref_safety_train": 3600,
        "pref_safety_eval": 400,
        "pref_ranked_train": 1000,
        "prompts_train": 1000,
        "prompts_eval": 200,
    }
    for name, n in expected.items():
        assert len(_rows(full[name])) == n
        assert manifest["files"][f"{name}.jsonl"] == n
    assert manifest["seed"] == 0
    for kind in ("helpfulness", "safety"):
        stats = manifest["preferences"][kind]
        assert 0.68 <= stats["annotator_agreement"] <= 0.77
        assert min(stats["margin_level_shares"].values()) >= 0.10
        assert stats["significantly_better_gold_agreement"] >= 0.90


def test_sft_rows(full):
    rows = _rows(full["sft_train"]) + _rows(full["sft_eval"])
    for row in rows:
        assert set(row) == {"messages", "unsafe"}
        user, assistant = row["messages"]
        assert user["role"] == "user" and assistant["role"] == "assistant"
        assert isinstance(user["content"], str) and isinstance(assistant["content"], str)
        assert row["unsafe"] is is_unsafe(user["content"])
        assert len(user["content"].split()) < 50 and len(assistant["content"].split()) < 25
    assert sum(r["unsafe"] for r in rows) / len(rows) == pytest.approx(0.25, abs=0.01)


def test_demonstrations_leave_headroom(full):
    """Imperfect demonstrations: RL has room to raise the gold reward (best is 1.0)."""
    rows = _rows(full["sft_train"])
    safe = [gold_helpfulness(*(m["content"] for m in r["messages"])) for r in rows if not r["unsafe"]]
    unsafe = [gold_safety(*(m["content"] for m in r["messages"])) for r in rows if r["unsafe"]]
    reward = [gold_reward(*(m["content"] for m in r["messages"])) for r in rows]
    assert 0.55 <= sum(safe) / len(safe) <= 0.75
    assert 0.35 <= sum(unsafe) / len(unsafe) <= 0.65
    assert sum(reward) / len(reward) <= 0.75
    assert sum(s == 1.0 for s in safe) / len(safe) >= 0.5  # the right answer is there to learn
    manifest = json.loads(Path(full["manifest"]).read_text(encoding="utf-8"))
    assert manifest["demonstrations"]["mean_gold_helpfulness_safe"] <= 0.75


@pytest.mark.parametrize("kind,unsafe_share", [("helpfulness", 0.25), ("safety", 0.6)])
def test_preference_rows(full, kind, unsafe_share):
    gold = gold_helpfulness if kind == "helpfulness" else gold_safety
    rows = _rows(full[f"pref_{kind}_train"]) + _rows(full[f"pref_{kind}_eval"])
    keys = {"prompt", "chosen", "rejected", "margin", "unsafe", "gold_chosen", "gold_rejected"}
    for row in rows:
        assert set(row) == keys
        (user,), (chosen,), (rejected,) = row["prompt"], row["chosen"], row["rejected"]
        assert (user["role"], chosen["role"], rejected["role"]) == ("user", "assistant", "assistant")
        assert chosen["content"] != rejected["content"]
        assert row["margin"] in MARGIN_LEVELS
        assert isinstance(row["gold_chosen"], float) and isinstance(row["gold_rejected"], float)
        assert row["gold_chosen"] == gold(user["content"], chosen["content"])
        assert row["gold_rejected"] == gold(user["content"], rejected["content"])
        assert row["unsafe"] is is_unsafe(user["content"])
    assert sum(r["unsafe"] for r in rows) / len(rows) == pytest.approx(unsafe_share, abs=0.01)
    # Labels are noisy but follow the gold reward.
    ordered = [r for r in rows if r["gold_chosen"] != r["gold_rejected"]]
    assert 0.75 <= sum(r["gold_chosen"] > r["gold_rejected"] for r in ordered) / len(ordered) < 0.95


def test_ranked_and_prompt_rows(full):
    for row in _rows(full["pref_ranked_train"]):
        assert set(row) == {"prompt", "responses"} and isinstance(row["prompt"], str)
        assert len(row["responses"]) == 4 and len(set(row["responses"])) == 4
    for split in ("train", "eval"):
        rows = _rows(full[f"prompts_{split}"])
        assert all(set(r) == {"prompt", "unsafe"} and r["prompt"][0]["role"] == "user" for r in rows)
    # Eval prompts are distinct; the training pool, like the comparisons, may repeat a prompt.
    eval_rows = _rows(full["prompts_eval"])
    assert len({_prompt_of(r) for r in eval_rows}) == len(eval_rows) == 200


def test_eval_prompts_are_disjoint_from_every_training_file(full):
    train = {_prompt_of(r) for name in TRAIN_FILES for r in _rows(full[name])}
    held = {_prompt_of(r) for name in EVAL_FILES for r in _rows(full[name])}
    assert train.isdisjoint(held)
    assert all(held_out(p) for p in held) and not any(held_out(p) for p in train)


def test_same_seed_gives_byte_identical_files(tmp_path):
    a = write_toyworld(tmp_path / "a", seed=3, **SMALL)
    b = write_toyworld(tmp_path / "b", seed=3, **SMALL)
    c = write_toyworld(tmp_path / "c", seed=4, **SMALL)
    for name in a:
        assert Path(a[name]).read_bytes() == Path(b[name]).read_bytes(), name
    assert Path(a["sft_train"]).read_bytes() != Path(c["sft_train"]).read_bytes()
    assert len(_rows(a["sft_eval"])) == 30 and len(_rows(a["prompts_eval"])) == 30
