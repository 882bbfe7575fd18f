"""Soft labels (``p_chosen``, written by `rayrlhf label` and `rayrlhf data aggregate`) reach the
reward-model and DPO losses: -p log sigmoid(d) - (1 - p) log sigmoid(-d) per pair."""
import json

import pytest
import torch
import torch.nn.functional as F

from rayrlhf.config import DPOConfig, RMConfig, load_config
from rayrlhf.data.validate import validate_source
from rayrlhf.trainer.dpo import DPOTask
from rayrlhf.trainer.rm import RMTask, encode_pair_records

PROMPT = [{"role": "user", "content": "Where is the red key?"}]


@pytest.fixture()
def records(tmp_path):
    path = tmp_path / "soft.jsonl"
    rows = [{"prompt": PROMPT, "chosen": "In the kitchen.", "rejected": "In the hall.", "p_chosen": 0.7},
            {"prompt": PROMPT, "chosen": "The red key is in the kitchen.", "rejected": "I cannot help."}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, problems = validate_source(str(path), "preference")
    assert not problems
    return result.records


def test_the_reader_keeps_the_soft_label_out_of_meta(records):
    assert [r.p_chosen for r in records] == [0.7, None]
    assert "p_chosen" not in records[0].meta


def test_reward_model_loss_uses_the_soft_label(tiny_model_dir, records):
    task = RMTask(load_config(RMConfig, data={"model": {"name_or_path": tiny_model_dir}, "data": {"train": ["x"]}}))
    batch = task.collate(encode_pair_records(records, task.tokenizer, 64, task.cfg.reward)[0])
    torch.testing.assert_close(batch["p"], torch.tensor([0.7, 1.0]))
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():
        loss, _ = task.loss(model, batch, normalizer=2)
        r = task.scores(model, batch)
    d = r[batch["better"]] - r[batch["worse"]]
    expected = (-(0.7 * F.logsigmoid(d[0]) + 0.3 * F.logsigmoid(-d[0])) - F.logsigmoid(d[1])) / 2
    assert loss.item() == pytest.approx(expected.item(), rel=1e-5)


def test_dpo_combines_the_soft_label_with_cdpo_smoothing(tiny_model_dir, records):
    cfg = load_config(DPOConfig, data={"model": {"name_or_path": tiny_model_dir}, "data": {"train": ["x"]},
                                       "dpo": {"loss": "cdpo", "label_smoothing": 0.1, "beta": 0.5}})
    task = DPOTask(cfg)
    batch = task.collate(encode_pair_records(records, task.tokenizer, 64, cfg.dpo)[0])
    batch["ref_logps"] = torch.zeros(batch["input_ids"].shape[0])
    torch.manual_seed(0)
    model = task.build_model().eval()
    with torch.no_grad():
        *_, kw = task._pairs(model, batch)
    # q = p (1 - ls) + (1 - p) ls: 0.7 * 0.9 + 0.3 * 0.1 = 0.66 -> smoothing 0.34; a hard label: 0.1
    torch.testing.assert_close(kw["label_smoothing"], torch.tensor([0.34, 0.1]))
