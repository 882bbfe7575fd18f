"""Ranked lists in reward-model training: one example per list, each response scored once, the
loss the mean over the list's pairs (InstructGPT), the same numbers as the pairs one by one."""
import json

import pytest
import torch

from rayrlhf.config import RMConfig, load_config
from rayrlhf.data.tokenize import encode_pair
from rayrlhf.data.validate import validate_source
from rayrlhf.trainer.rm import RMTask, encode_pair_records

PROMPT = [{"role": "user", "content": "Where is the red key?"}]
RANKED = ["The red key is in the hall.", "In the hall.", "Music makes me happy."]  # best first


@pytest.fixture()
def records(tmp_path):
    path = tmp_path / "mixed.jsonl"
    rows = [{"prompt": PROMPT, "responses": RANKED},
            {"prompt": PROMPT, "responses": ["In the hall.", "I cannot do that."], "scores": [0.8, 0.1]}]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    result, problems = validate_source(str(path), "preference", format="ranked")
    assert not problems
    return result.records  # 3 pairs from the first row, 1 from the second


def _task(tiny_model_dir, ranked_lists):
    return RMTask(load_config(RMConfig, data={"model": {"name_or_path": tiny_model_dir}, "data": {"train": ["x"]},
                                              "reward": {"ranked_lists": ranked_lists}}))


def test_a_ranked_list_is_one_example_with_each_response_once(tiny_model_dir, records):
    task = _task(tiny_model_dir, "kwise")
    examples, _ = encode_pair_records(records, task.tokenizer, 64, task.cfg.reward)
    assert len(examples) == 2
    first = examples[0]
    assert (first["better"], first["worse"]) == ([0, 0, 1], [1, 2, 2])
    # the list's sequences are exactly the pair encodings of its responses
    by_pair = [encode_pair(task.tokenizer, r, 64) for r in records[:3]]
    assert first["seqs"] == [by_pair[0]["chosen_ids"], by_pair[0]["rejected_ids"], by_pair[1]["rejected_ids"]]
    assert first["masks"][2] == by_pair[1]["rejected_loss_mask"]
    assert examples[1]["seqs"] == [encode_pair(task.tokenizer, records[3], 64)["chosen_ids"],
                                   encode_pair(task.tokenizer, records[3], 64)["rejected_ids"]]
    pairs, _ = encode_pair_records(records, task.tokenizer, 64, _task(tiny_model_dir, "pairs").cfg.reward)
    assert [len(ex["seqs"]) for ex in pairs] == [2, 2, 2, 2]


def test_kwise_loss_is_the_mean_over_each_lists_pairs(tiny_model_dir, records):
    kwise, pairs = _task(tiny_model_dir, "kwise"), _task(tiny_model_dir, "pairs")
    torch.manual_seed(0)
    model = kwise.build_model().eval()
    k_batch = kwise.collate(encode_pair_records(records, kwise.tokenizer, 64, kwise.cfg.reward)[0])
    p_batch = pairs.collate(encode_pair_records(records, pairs.tokenizer, 64, pairs.cfg.reward)[0])
    assert k_batch["input_ids"].shape[0] == 5 and p_batch["input_ids"].shape[0] == 8  # 3 + 2 vs 4 x 2
    with torch.no_grad():
        k_loss, k_stats = kwise.loss(model, k_batch, normalizer=2)
        p_loss, p_stats = pairs.loss(model, p_batch, normalizer=4)
        r = pairs.scores(model, p_batch)
        per_pair = -torch.nn.functional.logsigmoid(r[p_batch["better"]] - r[p_batch["worse"]])
        # the same four comparisons: a list of 3 counts once, beside one plain pair
        assert k_loss.item() == pytest.approx(((per_pair[:3].mean() + per_pair[3]) / 2).item(), rel=1e-5)
        assert p_loss.item() == pytest.approx(per_pair.mean().item(), rel=1e-5)
        assert (k_stats["pairs"], k_stats["sets"], p_stats["sets"]) == (4.0, 2.0, 4.0)
        assert k_stats["correct"] == p_stats["correct"]
        k_eval, p_eval = kwise.eval_sums(model, k_batch), pairs.eval_sums(model, p_batch)
    for key in ("pairs", "correct", "loss_sum", "pairs@unlabelled"):
        assert k_eval[key] == pytest.approx(p_eval[key], rel=1e-5)
    assert (k_eval["scored"], p_eval["scored"]) == (5.0, 8.0)
