"""RRHF through the shared loop in one process: ranked lists of 4 and pairs, it learns the
given order, resume is exact and bad rows stop it early."""
import json
import os

import pytest
import torch

from rayrlhf.data.validate import DataValidationError
from rayrlhf.driver.train_stage import prepare
from rayrlhf.trainer.rrhf import RRHFTask
from tests.trainer.pref_stage import check_resumes_exactly, run_stage, small_world, stage_cfg


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    out = small_world(tmp_path_factory.mktemp("tw"))
    lines = open(os.path.join(out, "data", "pref_ranked_train.jsonl")).read().splitlines(keepends=True)
    with open(os.path.join(out, "ranked96.jsonl"), "w") as f:
        f.write("".join(lines[:96]))
    with open(os.path.join(out, "ranked_heldout.jsonl"), "w") as f:
        f.write("".join(lines[96:192]))
    return out


def _cfg(world, run_dir, train_file=None, **rrhf):
    return stage_cfg("rrhf", world, run_dir, train_file or f"{world}/ranked96.jsonl", rrhf)


def _run(cfg, resume=False, task=None):
    return run_stage("rrhf", cfg, resume, task)


def test_rrhf_keeps_each_ranked_list_whole_learns_its_order_and_resumes_exactly(world, tmp_path):
    cfg = _cfg(world, str(tmp_path / "full"))
    summary, prep, task = _run(cfg)
    # 96 ranked lists of 4: 96 examples of 4 sequences and 6 pairs each, the first response best.
    assert len(prep["train"]) == 96
    assert all(len(ex["seqs"]) == 4 and len(ex["better"]) == 6 for ex in prep["train"])
    batch = task.collate(prep["train"][:2])
    assert batch["best"].tolist() == [0, 4]
    assert batch["input_ids"].shape[0] == 8 and batch["better"].numel() == 12
    for k in ("loss", "rank_loss", "sft_loss", "rank_accuracy", "best_score"):
        assert f"train/{k}" in summary and f"eval/{k}" in summary
    assert summary["eval/lists"] == len(prep["eval"]) == summary["eval/pairs"]  # held-out pairs: lists of 2
    info = json.load(open(tmp_path / "full" / "export" / "rayrlhf.json"))
    assert info["stage"] == "rrhf" and info["rank_weight"] == 1.0
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "full" / "export"))

    check_resumes_exactly("rrhf", _cfg(world, str(tmp_path / "stopped")), str(tmp_path / "full"))


def test_the_ranking_term_orders_responses_better_than_fine_tuning_on_the_best_alone(world, tmp_path):
    """RRHF against its own SFT term alone (rank_weight 0), same data and steps: the share of
    pairs of ranked lists the policy's length-normalised logprobs order as the annotator did,
    on the training lists and on 96 held-out lists."""
    from transformers import AutoModelForCausalLM

    acc = {}
    for name, rank_weight in (("rrhf", 1.0), ("sft_only", 0.0)):
        cfg = _cfg(world, str(tmp_path / name), rank_weight=rank_weight)
        cfg.data.eval = [f"{world}/ranked_heldout.jsonl"]
        summary, prep, task = _run(cfg)
        model = AutoModelForCausalLM.from_pretrained(str(tmp_path / name / "export")).eval()
        with torch.no_grad():
            sums = task.eval_sums(model, task.collate(prep["train"]))
        acc[name] = sums["correct"] / sums["pairs"], summary["eval/rank_accuracy"]
    print("RRHF rank accuracy (train, held-out)", acc)
    assert acc["rrhf"][0] > acc["sft_only"][0] + 0.05
    assert acc["rrhf"][1] > acc["sft_only"][1]
    assert acc["rrhf"][1] > 0.6


def test_the_loss_is_the_one_computed_by_hand_from_the_models_logprobs(world, tmp_path):
    """The task's loss on one batch equals rank + SFT terms recomputed here, token by token."""
    from transformers import AutoModelForCausalLM

    cfg = _cfg(world, str(tmp_path / "x"), rank_weight=2.0, sft_weight=0.5)
    prep = prepare("rrhf", cfg, resume=False)
    task = RRHFTask(cfg)
    model = AutoModelForCausalLM.from_pretrained(f"{world}/base_model").eval()
    exs = prep["train"][:3]
    with torch.no_grad():
        loss, sums = task.loss(model, task.collate(exs), 3.0)
        want = 0.0
        for ex in exs:
            p, nll = [], []
            for ids, m in zip(ex["seqs"], ex["masks"]):
                logits = model(input_ids=torch.tensor([ids])).logits[0].float().log_softmax(-1)
                lps = [logits[t - 1, ids[t]].item() for t in range(1, len(ids)) if m[t]]
                p.append(sum(lps) / len(lps))
                nll.append(-sum(lps) / len(lps))
            want += 2.0 * sum(max(0.0, p[w] - p[b]) for b, w in zip(ex["better"], ex["worse"])) + 0.5 * nll[0]
    assert loss.item() == pytest.approx(want / 3.0, rel=1e-4)
    assert sums["lists"] == 3.0 and sums["pairs"] == 18.0


def test_a_ranked_row_with_one_response_stops_before_training(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in open(f"{world}/ranked96.jsonl")][:3]
    rows[2]["responses"] = rows[2]["responses"][:1]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataValidationError) as e:
        prepare("rrhf", _cfg(world, str(tmp_path / "x"), train_file=str(bad)), resume=False)
    print(e.value)
    assert "bad.jsonl" in str(e.value) and ":3" in str(e.value) and "responses" in str(e.value)


def test_plan_export_and_submit_know_the_dpo_and_rrhf_commands(world, tmp_path, capsys):
    import yaml

    from rayrlhf.engine.export_cli import run_kind
    from rayrlhf.jobs import COMMANDS
    from rayrlhf.placement.cli import detect_command, plan_main

    for command in ("dpo", "rrhf"):
        raw = {"model": {"name_or_path": "m"}, "data": {"train": ["x"]}, command: {}}
        assert detect_command(raw) == command and run_kind(raw)[0] == command and command in COMMANDS
    path = tmp_path / "rrhf.yaml"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": f"{world}/base_model"},
                                    "data": {"train": [f"{world}/ranked96.jsonl"]}, "rrhf": {"rank_weight": 1.0},
                                    "scaling": {"num_workers": 2, "use_gpu": True, "gpu_memory_gib": 80}}))
    assert plan_main(["--config", str(path), "--no-cluster"]) == 0
    out = capsys.readouterr().out
    assert "memory plan (rrhf" in out and "a ranked list of K is one example of K sequences" in out


def test_a_missing_data_file_is_a_one_line_error_not_a_traceback(world, tmp_path, capsys):
    import yaml

    from rayrlhf.cli import main

    path = tmp_path / "rrhf.yaml"
    missing = tmp_path / "no_such_ranked.jsonl"
    path.write_text(yaml.safe_dump({"model": {"name_or_path": f"{world}/base_model"}, "rrhf": {},
                                    "data": {"train": [str(missing)]}, "run": {"output_dir": str(tmp_path)}}))
    assert main(["rrhf", "--config", str(path)]) == 2
    err = capsys.readouterr().err
    assert err.startswith("rayrlhf rrhf: ") and str(missing) in err and "Traceback" not in err
