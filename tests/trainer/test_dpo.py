"""DPO through the shared loop in one process: it learns, its reference is scored once, resume
is exact and bad rows stop it early."""
import json
import math

import pytest
import torch
from safetensors.torch import load_file

from rayrlhf.data.validate import DataValidationError
from rayrlhf.driver.train_stage import prepare
from rayrlhf.metrics import read_metrics
from rayrlhf.trainer.dpo import DPOTask
from tests.trainer.pref_stage import check_resumes_exactly, run_stage, small_world, stage_cfg
from tests.trainer.test_loop import CrashAt, _comparable


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    return small_world(tmp_path_factory.mktemp("tw"))


def _cfg(world, run_dir, train_file=None, **dpo):
    return stage_cfg("dpo", world, run_dir, train_file or f"{world}/data/pref_helpfulness_train.jsonl", dpo)


def _run(cfg, resume=False, task=None):
    return run_stage("dpo", cfg, resume, task)


def test_dpo_learns_scores_the_reference_once_and_resumes_exactly(world, tmp_path):
    cfg = _cfg(world, str(tmp_path / "full"), beta=0.1)
    summary, prep, task = _run(cfg)
    n_train, n_eval, mb = len(prep["train"]), len(prep["eval"]), 8
    # 2 epochs, one reference pass before the first step: each example scored once
    assert task.reference_batches == math.ceil(n_train / mb) + math.ceil(n_eval / mb)
    rows = read_metrics(str(tmp_path / "full"))
    acc = [r["train/rewards/accuracies"] for r in rows if "train/rewards/accuracies" in r]
    print("DPO train accuracies", acc[0], acc[-1], "eval", summary["eval/rewards/accuracies"])
    assert acc[0] == 0.0  # the first step's pairs are scored before any update: policy == reference
    assert sum(acc[-3:]) / 3 > 0.5
    assert summary["train/rewards/margins"] > 0
    for k in ("rewards/chosen", "rewards/rejected", "rewards/accuracies", "rewards/margins", "logps/chosen",
              "logps/rejected", "loss"):
        assert f"train/{k}" in summary and f"eval/{k}" in summary
    assert summary["eval/pairs"] == n_eval
    assert json.load(open(tmp_path / "full" / "export" / "rayrlhf.json"))["stage"] == "dpo"
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tmp_path / "full" / "export"))

    check_resumes_exactly("dpo", _cfg(world, str(tmp_path / "stopped"), beta=0.1), str(tmp_path / "full"))


def test_a_row_without_rejected_stops_before_training(world, tmp_path):
    bad = tmp_path / "bad.jsonl"
    rows = [json.loads(line) for line in open(f"{world}/data/pref_helpfulness_train.jsonl")][:3]
    del rows[1]["rejected"]
    bad.write_text("".join(json.dumps(r) + "\n" for r in rows))
    with pytest.raises(DataValidationError) as e:
        prepare("dpo", _cfg(world, str(tmp_path / "x"), train_file=str(bad)), resume=False)
    print(e.value)
    assert "bad.jsonl" in str(e.value) and "rejected" in str(e.value) and ":2" in str(e.value)


def test_a_larger_beta_keeps_the_policy_nearer_the_reference(world, tmp_path):
    """The same training at beta 0.1, 1 and 100: the held-out log-ratio log pi/pi_ref of the
    chosen responses (the implicit reward over beta) shrinks as beta grows. It does not reach 0
    at beta 100: Adam's first steps move the policy before the loss saturates."""
    drift = {}
    for beta in (0.1, 1.0, 100.0):
        cfg = _cfg(world, str(tmp_path / f"beta{beta}"), beta=beta)
        cfg.train.lr = 3e-4
        summary, _, _ = _run(cfg)
        drift[beta] = abs(summary["eval/rewards/chosen"]) / beta
    print("DPO |log pi/pi_ref| of held-out chosen responses by beta", drift)
    assert drift[100.0] < drift[1.0] < drift[0.1]
    assert drift[100.0] < 0.4 * drift[0.1]


def test_dpo_with_lora_scores_the_reference_on_the_base_and_resumes_exactly(world, tmp_path):
    """With adapters the reference is the base with them switched off: its logprobs equal a
    plain load of the base model's, also when the run resumes after its adapters have moved."""
    pytest.importorskip("peft")
    from transformers import AutoModelForCausalLM

    from rayrlhf.trainer.dpo import sequence_logps
    from tests.trainer.test_loop import _lora

    def cfg_of(name):
        cfg = _lora(_cfg(world, str(tmp_path / name), beta=0.1))
        cfg.train.lr = 2e-2
        return cfg

    summary, prep, task = _run(cfg_of("full"))
    rows = read_metrics(str(tmp_path / "full"))
    print("DPO LoRA eval", {k: v for k, v in summary.items() if k.startswith("eval/")})
    assert summary["train/rewards/margins"] > 0
    base = AutoModelForCausalLM.from_pretrained(f"{world}/base_model").eval()
    exs = prep["eval"][:8]
    with torch.no_grad():
        expected = sequence_logps(base, task.collate([{k: v for k, v in ex.items() if k != "ref"} for ex in exs]))
    got = torch.tensor([x for ex in exs for x in ex["ref"]])
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=1e-5)

    stopped = cfg_of("stopped")
    with pytest.raises(RuntimeError, match="killed"):
        _run(stopped, task=CrashAt(DPOTask(stopped), n=5 * 2 + 1))
    _, prep2, _ = _run(cfg_of("stopped"), resume=True)
    assert [ex["ref"] for ex in prep2["eval"]] == [ex["ref"] for ex in prep["eval"]]
    assert _comparable(read_metrics(str(tmp_path / "stopped"))) == _comparable(rows)
    a = load_file(str(tmp_path / "full" / "export" / "model.safetensors"))
    assert not any("lora" in k for k in a)
    b = base.state_dict()
    assert any(not torch.equal(a[k], b[k]) for k in a if k in b)  # the adapters are merged into the export
