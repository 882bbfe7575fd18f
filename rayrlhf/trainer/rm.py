"""Reward models: a scalar head trained on preference pairs.

Loss (InstructGPT eq. 1; Llama 2 eq. 2 with a margin m(r) from the annotator's label):
    L = -log sigmoid(r(x, y_c) - r(x, y_r) - m(r))
Ranked lists of K responses train on all C(K,2) of their pairs; by default each list is one
example whose responses are scored once (InstructGPT), not C(K,2) separate pairs. Held-out
accuracy is reported overall, per margin level (Llama 2 Table 8), and, where the data carries
noise-free gold scores (toyworld), against the gold order.
"""
from __future__ import annotations

import torch

from rayrlhf.algo.losses import pairwise_reward_loss
from rayrlhf.data.schema import MARGIN_LEVELS
from rayrlhf.data.tokenize import encode_pair, encode_response, fit, pad_right, render_prompt
from rayrlhf.models.tokenizer import tokenizer_for
from rayrlhf.models import load_scalar_model

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


def _pair_fields(records, reward_cfg) -> dict:
    """Per-pair margin, margin level, gold difference (NaN without gold scores) and soft label
    (the probability that the first response is the better one; 1 for a hard label)."""
    gold = []
    for r in records:
        gc, gr = r.meta.get("gold_chosen"), r.meta.get("gold_rejected")
        gold.append(float(gc) - float(gr) if gc is not None and gr is not None else float("nan"))
    return {"margin": [margin_of(r, reward_cfg) for r in records],
            "level": [r.margin_label or NO_LEVEL for r in records], "gold_diff": gold,
            "p": [1.0 if r.p_chosen is None else float(r.p_chosen) for r in records]}


def _list_key(record):
    """The ranked row a pair record came from, or None for a plain pair."""
    if "rank_pair" not in record.meta or record.source is None:
        return None
    return record.source.file, record.source.line


def _encode_list(records, tokenizer, max_len: int, reward_cfg, stats: dict) -> dict:
    """The pairs of one ranked row as one example: each of its responses once, prompt cut once."""
    text = {}
    for r in records:
        a, b = r.meta["rank_pair"]
        text[a], text[b] = r.chosen, r.rejected
    positions = sorted(text)
    index = {pos: i for i, pos in enumerate(positions)}
    prompt, responses = fit(render_prompt(tokenizer, records[0].prompt),
                            [encode_response(tokenizer, text[pos]) for pos in positions], max_len, stats)
    return {"seqs": [prompt + x for x in responses], "masks": [[0] * len(prompt) + [1] * len(x) for x in responses],
            "better": [index[r.meta["rank_pair"][0]] for r in records],
            "worse": [index[r.meta["rank_pair"][1]] for r in records], **_pair_fields(records, reward_cfg)}


def encode_pair_records(records, tokenizer, max_len: int, reward_cfg) -> tuple[list[dict], dict]:
    """The RM's examples, each a set of sequences to score and the (better, worse) pairs among
    them: a preference pair is a set of 2. With ``reward.ranked_lists: kwise`` the C(K,2) pairs
    of one ranked row are one set of its K responses, each scored once, the list one loss term
    (InstructGPT, Ouyang et al. 2022 Sec. 3.5); with ``pairs`` every pair is its own example.
    Returns (examples, truncation counts)."""
    kwise = reward_cfg.ranked_lists == "kwise"
    examples, stats, lists = [], {}, {}
    for r in records:
        key = _list_key(r) if kwise else None
        if key is None:
            ex = encode_pair(tokenizer, r, max_len, stats)
            examples.append({"seqs": [ex["chosen_ids"], ex["rejected_ids"]],
                             "masks": [ex["chosen_loss_mask"], ex["rejected_loss_mask"]],
                             "better": [0], "worse": [1], **_pair_fields([r], reward_cfg)})
        else:
            if key not in lists:
                lists[key] = []
                examples.append(key)  # the list's place; encoded once all its pairs are in
            lists[key].append(r)
    examples = [ex if isinstance(ex, dict) else _encode_list(lists[ex], tokenizer, max_len, reward_cfg, stats)
                for ex in examples]
    return examples, stats


def collate_comparisons(examples: list[dict], pad_id: int) -> dict:
    """Every sequence of the batch in one padded block, and the pairs as row indices into it.

    Returns ``input_ids``, ``attention_mask``, ``loss_mask`` (Shape: (S, T)), ``better`` and
    ``worse`` (Shape: (P,), rows of the preferred and the other response of each pair),
    ``weight`` (Shape: (P,), 1 / pairs of its example, so each example weighs 1), ``seq_weight``
    (Shape: (S,), 1 / sequences of its example), ``margin`` and ``gold_diff`` (Shape: (P,)),
    ``p`` (Shape: (P,), the soft label of each pair, 1 for a hard one), ``level`` (P labels) and
    ``sets`` (examples in the batch).
    """
    seqs, masks, better, worse, weight, seq_weight = [], [], [], [], [], []
    margin, level, gold, soft = [], [], [], []
    for ex in examples:
        offset, n = len(seqs), len(ex["better"])
        seqs += ex["seqs"]
        masks += ex["masks"]
        better += [offset + i for i in ex["better"]]
        worse += [offset + j for j in ex["worse"]]
        weight += [1.0 / n] * n
        seq_weight += [1.0 / len(ex["seqs"])] * len(ex["seqs"])
        margin += ex["margin"]
        level += ex["level"]
        gold += ex["gold_diff"]
        soft += ex.get("p", [1.0] * n)
    return {
        "input_ids": pad_right(seqs, pad_id),
        "attention_mask": pad_right([[1] * len(x) for x in seqs], 0),
        "loss_mask": pad_right(masks, 0),
        "better": torch.tensor(better, dtype=torch.long),
        "worse": torch.tensor(worse, dtype=torch.long),
        "weight": torch.tensor(weight, dtype=torch.float32),
        "seq_weight": torch.tensor(seq_weight, dtype=torch.float32),
        "margin": torch.nan_to_num(torch.tensor(margin, dtype=torch.float32), nan=0.0),
        "gold_diff": torch.tensor(gold, dtype=torch.float32),
        "p": torch.tensor(soft, dtype=torch.float32),
        "level": level,
        "sets": len(examples),
    }


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
        """On CPU in float32 (the engine keeps float32 master weights and computes in model.dtype);
        under LoRA the frozen base loads in model.dtype."""
        from rayrlhf.trainer.loop import engine_settings

        m, dtype = self.cfg.model, engine_settings(self.cfg, self.name).load_dtype(trainable=True)
        return load_scalar_model(m.name_or_path, dtype, m.trust_remote_code, pad_token_id=self.tokenizer.pad_token_id)

    def collate(self, examples):
        if self.tokenizer.pad_token_id is None:
            raise ValueError("pad_id is None; give the tokenizer a pad token")
        return collate_comparisons(examples, self.tokenizer.pad_token_id)

    def normalizer(self, examples) -> float:
        return float(len(examples))

    def scores(self, model, batch):
        """The scalar reward of every sequence in the batch. Shape: (S,)."""
        out = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        return out.float().squeeze(-1)

    def loss(self, model, batch, normalizer):
        r = self.scores(model, batch)
        rc, rr = r[batch["better"]], r[batch["worse"]]
        loss, stats = pairwise_reward_loss(rc, rr, margin=batch["margin"], num_pairs=normalizer,
                                           weights=batch["weight"], p_chosen=batch["p"])
        if self.cfg.reward.reward_l2 > 0:
            # Keeps scores near zero without changing their order (a common RM regulariser).
            loss = loss + self.cfg.reward.reward_l2 * (batch["seq_weight"] * r.pow(2)).sum() / normalizer
        return loss, {"loss_sum": float(loss.detach()) * normalizer, "sets": float(batch["sets"]),
                      "pairs": float(rc.numel()), "correct": float((rc > rr).float().sum())}

    def train_metrics(self, sums):
        return {"train/loss": sums["loss_sum"] / max(sums["sets"], 1.0),
                "train/accuracy": sums["correct"] / max(sums["pairs"], 1.0)}

    def eval_keys(self):
        keys = ["pairs", "correct", "loss_sum", "gold_pairs", "gold_correct", "scored", "reward_sum", "reward_sq_sum"]
        for level in LEVELS:
            keys += [f"pairs@{_slug(level)}", f"correct@{_slug(level)}"]
        return keys

    def eval_sums(self, model, batch):
        r = self.scores(model, batch)
        rc, rr = r[batch["better"]], r[batch["worse"]]
        per_pair = -torch.nn.functional.logsigmoid(rc - rr)
        right = (rc > rr).float() + 0.5 * (rc == rr).float()
        gold = batch["gold_diff"]
        has_gold = torch.isfinite(gold) & (gold != 0)
        gold_right = ((rc - rr) * gold > 0).float()
        sums = {
            "pairs": float(rc.numel()), "correct": float(right.sum()), "loss_sum": float(per_pair.sum()),
            "gold_pairs": float(has_gold.sum()), "gold_correct": float(gold_right[has_gold].sum()),
            "scored": float(r.numel()), "reward_sum": float(r.sum()), "reward_sq_sum": float(r.pow(2).sum()),
        }
        for level in LEVELS:
            sel = torch.tensor([lv == level for lv in batch["level"]], dtype=torch.bool)
            sums[f"pairs@{_slug(level)}"] = float(sel.sum())
            sums[f"correct@{_slug(level)}"] = float(right[sel].sum())
        return sums

    def eval_metrics(self, sums):
        pairs, scored = max(sums["pairs"], 1.0), max(sums["scored"], 1.0)
        mean = sums["reward_sum"] / scored
        out = {
            "eval/accuracy": sums["correct"] / pairs,
            "eval/loss": sums["loss_sum"] / pairs,
            "eval/pairs": sums["pairs"],
            "eval/reward_mean": mean,
            "eval/reward_std": max(sums["reward_sq_sum"] / scored - mean ** 2, 0.0) ** 0.5,
        }
        if sums["gold_pairs"]:
            out["eval/gold_accuracy"] = sums["gold_correct"] / sums["gold_pairs"]
        for level in LEVELS:
            n = sums[f"pairs@{_slug(level)}"]
            if n:
                out[f"eval/accuracy@{_slug(level)}"] = sums[f"correct@{_slug(level)}"] / n
                out[f"eval/pairs@{_slug(level)}"] = n
        return out

    def export_info(self, summary) -> dict:
        """What rayrlhf.json of the export records (the score statistics normalise this RM in RL)."""
        return {"stage": "rm", "reward_name": self.cfg.reward.name, "summary": summary,
                "score_mean": summary.get("eval/reward_mean"), "score_std": summary.get("eval/reward_std")}
