"""Reward models: a scalar head trained on preference pairs.

Loss (InstructGPT eq. 1; Llama 2 eq. 2 with a margin m(r) from the annotator's label):
    L = -log sigmoid(r(x, y_c) - r(x, y_r) - m(r))
Held-out accuracy is reported overall, per margin level (Llama 2 Table 8), and, where the data
carries noise-free gold scores (toyworld), against the gold order.
"""
from __future__ import annotations

import torch

from rayrlhf.algo.losses import pairwise_reward_loss
from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.data.tokenize import collate_pairs, encode_pair
from rayrlhf.models.tokenizer import tokenizer_for
from rayrlhf.models import export_hf, load_scalar_model

NO_LEVEL = "unlabelled"
LEVELS = MARGIN_LEVELS + (NO_LEVEL,)


def _slug(level: str) -> str:
    return level.replace(" ", "_")


def margin_of(record, reward_cfg) -> float:
    """The margin m(r) a pair contributes to the loss under the configured mode."""
    if reward_cfg.margin == "label" and record.margin_label is not None:
        return reward_cfg.margin_scale * reward_cfg.margin_values.get(record.margin_label, 0.0)
    if reward_cfg.margin == "value" and record.margin is not None:
        return reward_cfg.margin_scale * float(record.margin)
    return 0.0


def encode_pair_records(records, tokenizer, max_len: int, reward_cfg) -> tuple[list[dict], dict]:
    examples, stats = [], {}
    for r in records:
        ex = encode_pair(tokenizer, r, max_len, stats)
        ex["margin"] = margin_of(r, reward_cfg)
        ex["level"] = r.margin_label or NO_LEVEL
        gc, gr = r.meta.get("gold_chosen"), r.meta.get("gold_rejected")
        ex["gold_diff"] = float(gc) - float(gr) if gc is not None and gr is not None else float("nan")
        examples.append(ex)
    return examples, stats


def length_baseline(records) -> float:
    """Accuracy of 'the longer response is better' (ties count half): the bar an RM must clear."""
    if not records:
        return float("nan")
    score = 0.0
    for r in records:
        lc, lr = len(r.chosen), len(r.rejected)
        score += 1.0 if lc > lr else 0.5 if lc == lr else 0.0
    return score / len(records)


class RMTask:
    name = "rm"

    def __init__(self, cfg):
        self.cfg = cfg
        self.tokenizer = tokenizer_for(cfg.model)

    def build_model(self):
        m = self.cfg.model
        model = load_scalar_model(m.name_or_path, m.dtype, m.trust_remote_code, pad_token_id=self.tokenizer.pad_token_id)
        if m.gradient_checkpointing:
            model.gradient_checkpointing_enable()
        return model

    def collate(self, examples):
        batch = collate_pairs(examples, self.tokenizer.pad_token_id)
        batch["level"] = [ex["level"] for ex in examples]
        batch["gold_diff"] = torch.tensor([ex["gold_diff"] for ex in examples], dtype=torch.float32)
        return batch

    def normalizer(self, examples) -> float:
        return float(len(examples))

    def rewards(self, model, batch):
        """(chosen, rejected) scalar rewards, each (B,), from one forward over 2B rows."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        r = out.float().squeeze(-1)
        b = r.shape[0] // 2
        return r[:b], r[b:]

    def loss(self, model, batch, normalizer):
        rc, rr = self.rewards(model, batch)
        loss, stats = pairwise_reward_loss(rc, rr, margin=batch["margin"], num_pairs=normalizer)
        if self.cfg.reward.reward_l2 > 0:
            # Keeps scores near zero without changing their order (a common RM regulariser).
            loss = loss + self.cfg.reward.reward_l2 * (rc.pow(2) + rr.pow(2)).sum() / (2 * normalizer)
        n = float(rc.shape[0])
        return loss, {"loss_sum": float(loss.detach()) * normalizer, "pairs": n,
                      "correct": float((rc > rr).float().sum())}

    def train_metrics(self, sums):
        pairs = max(sums["pairs"], 1.0)
        return {"train/loss": sums["loss_sum"] / pairs, "train/accuracy": sums["correct"] / pairs}

    def eval_keys(self):
        keys = ["pairs", "correct", "loss_sum", "gold_pairs", "gold_correct", "reward_sum", "reward_sq_sum"]
        for level in LEVELS:
            keys += [f"pairs@{_slug(level)}", f"correct@{_slug(level)}"]
        return keys

    def eval_sums(self, model, batch):
        rc, rr = self.rewards(model, batch)
        per_pair = -torch.nn.functional.logsigmoid(rc - rr)
        right = (rc > rr).float() + 0.5 * (rc == rr).float()
        gold = batch["gold_diff"]
        has_gold = torch.isfinite(gold) & (gold != 0)
        gold_right = ((rc - rr) * gold > 0).float()
        sums = {
            "pairs": float(rc.numel()), "correct": float(right.sum()), "loss_sum": float(per_pair.sum()),
            "gold_pairs": float(has_gold.sum()), "gold_correct": float(gold_right[has_gold].sum()),
            "reward_sum": float(rc.sum() + rr.sum()), "reward_sq_sum": float(rc.pow(2).sum() + rr.pow(2).sum()),
        }
        for level in LEVELS:
            sel = torch.tensor([lv == level for lv in batch["level"]], dtype=torch.bool)
            sums[f"pairs@{_slug(level)}"] = float(sel.sum())
            sums[f"correct@{_slug(level)}"] = float(right[sel].sum())
        return sums

    def eval_metrics(self, sums):
        pairs = max(sums["pairs"], 1.0)
        mean = sums["reward_sum"] / (2 * pairs)
        out = {
            "eval/accuracy": sums["correct"] / pairs,
            "eval/loss": sums["loss_sum"] / pairs,
            "eval/pairs": sums["pairs"],
            "eval/reward_mean": mean,
            "eval/reward_std": max(sums["reward_sq_sum"] / (2 * pairs) - mean ** 2, 0.0) ** 0.5,
        }
        if sums["gold_pairs"]:
            out["eval/gold_accuracy"] = sums["gold_correct"] / sums["gold_pairs"]
        for level in LEVELS:
            n = sums[f"pairs@{_slug(level)}"]
            if n:
                out[f"eval/accuracy@{_slug(level)}"] = sums[f"correct@{_slug(level)}"] / n
                out[f"eval/pairs@{_slug(level)}"] = n
        return out

    def export(self, model, out_dir, summary):
        extra = {"stage": "rm", "reward_name": self.cfg.reward.name, "summary": summary,
                 "score_mean": summary.get("eval/reward_mean"), "score_std": summary.get("eval/reward_std")}
        export_hf(model, self.tokenizer, out_dir, extra=extra)
