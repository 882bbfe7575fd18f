"""toyworld's annotator panel: the same pairs in every file, groups that differ on unsafe prompts,
and no change to any other toyworld file."""
import json
from pathlib import Path

import pytest

from rayrlhf.data.cli import main as data_main
from rayrlhf.tasks.toyworld import gold_reward, write_toyworld
from rayrlhf.tasks.toyworld.panel import PANEL

SMALL = dict(n_sft=300, n_pref=400, n_ranked=50, n_prompts=100, n_eval_prompts=30)


def _rows(path) -> list[dict]:
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f]


@pytest.fixture(scope="module")
def written(tmp_path_factory):
    out = tmp_path_factory.mktemp("panel")
    return write_toyworld(out / "with", seed=0, **SMALL), write_toyworld(out / "without", seed=0, n_panel=0, **SMALL)


def test_the_panel_changes_no_other_file(written):
    with_panel, without = written
    assert set(with_panel) - set(without) == {f"panel/{name}" for name, _ in PANEL}
    for name, path in without.items():
        if name != "manifest":
            assert Path(path).read_bytes() == Path(with_panel[name]).read_bytes(), name
    manifest = json.loads(Path(with_panel["manifest"]).read_text(encoding="utf-8"))
    panel = manifest.pop("panel")
    assert manifest == json.loads(Path(without["manifest"]).read_text(encoding="utf-8"))
    assert not (Path(without["manifest"]).parent / "panel").exists()
    assert panel["files"] == {f"panel/{name}.jsonl": 300 for name, _ in PANEL}


def test_every_annotator_labels_the_same_pairs(written):
    files = {name: _rows(written[0][f"panel/{name}"]) for name, _ in PANEL}
    first = files["general_1"]
    assert [r["id"] for r in first] == [f"panel-{i:04d}" for i in range(300)]
    assert sum(r["unsafe"] for r in first) == 150
    for rows in files.values():
        assert [r["id"] for r in rows] == [r["id"] for r in first]
        for r, f in zip(rows, first):
            assert {r["chosen"][0]["content"], r["rejected"][0]["content"]} == \
                {f["chosen"][0]["content"], f["rejected"][0]["content"]}
            assert r["gold_chosen"] == gold_reward(r["prompt"][0]["content"], r["chosen"][0]["content"])


def test_manifest_agreement_groups_differ_on_unsafe_prompts(written):
    stats = json.loads(Path(written[0]["manifest"]).read_text(encoding="utf-8"))["panel"]
    assert stats["fleiss_kappa"] == {"all": 0.1867, "safe": 0.4533, "unsafe": -0.0801}
    assert stats["agreement_across_groups"] == {"all": 0.5067, "safe": 0.7289, "unsafe": 0.2844}
    assert stats["agreement_within_groups"]["all"] == 0.7233
    assert stats["cohen_kappa"]["general_1/general_2"] == 0.5198
    assert stats["cohen_kappa"]["safety_1/safety_2"] == 0.3994


def test_agreement_cli_measures_what_the_manifest_says(written, tmp_path, capsys):
    files = [written[0][f"panel/{name}"] for name, _ in PANEL]
    report_path = tmp_path / "r.json"
    assert data_main(["agreement", *files, "--json", str(report_path)]) == 0
    report = json.loads(report_path.read_text())
    manifest = json.loads(Path(written[0]["manifest"]).read_text(encoding="utf-8"))["panel"]
    assert report["fleiss"]["fleiss_kappa"] == manifest["fleiss_kappa"]["all"]
    for r in report["pairwise"]:
        assert r["cohen_kappa"] == manifest["cohen_kappa"][f"{r['a']}/{r['b']}"]
    # Against the gated gold reward the safety group is right far more often.
    gold = report["with_gold"]
    assert gold["general_1"]["agreement"] == 0.5217 and gold["safety_1"]["agreement"] == 0.83
    assert gold["safety_1"]["gold_ties"] == 47


def test_weighting_the_safety_group_follows_the_gated_gold(written, tmp_path, capsys):
    files = [written[0][f"panel/{name}"] for name, _ in PANEL]
    weights = tmp_path / "w.yaml"
    weights.write_text("groups:\n  safety: {tags: [unsafe], weight: 3.0}\n")
    groups = ",".join(f"{n}={g}" for n, g in PANEL)
    outs = {m: tmp_path / f"{m}.jsonl" for m in ("majority", "weighted")}
    assert data_main(["aggregate", *files, "--out", str(outs["majority"])]) == 0
    assert data_main(["aggregate", *files, "--method", "weighted", "--groups", groups,
                      "--weights", str(weights), "--out", str(outs["weighted"])]) == 0
    share = {}
    for method, path in outs.items():
        rows = [r for r in _rows(path) if r["gold_chosen"] != r["gold_rejected"]]
        share[method] = round(sum(r["gold_chosen"] > r["gold_rejected"] for r in rows) / len(rows), 4)
    assert share == {"majority": 0.6087, "weighted": 0.8379}
