"""RRHF: rank responses to align a causal LM (Yuan et al. 2023), no reference and no reward
model at training time.

The examples are the RM stage's with ranked lists kept whole (``encode_pair_records`` with
``ranked_lists: kwise``): a ranked row of K responses is one example with its K sequences and
C(K, 2) (better, worse) pairs; a preference pair is a list of 2. The best response of a list is
the one that is never the worse of a pair (the first of a ranked row, the chosen of a pair).
The loss (``rrhf_loss``) ranks the policy's length-normalised log-probabilities by the given
order and fine-tunes on the best; each list weighs the same in a global batch.
"""
from __future__ import annotations

import torch

from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.algo.losses import rrhf_loss
from rayrlhf.trainer.rm import collate_comparisons
from rayrlhf.trainer.sft import SFTTask

SUM_KEYS = ("loss_sum", "rank_sum", "sft_sum", "lists", "pairs", "correct", "best_score_sum")


def best_of_list(better: list[int], worse: list[int]) -> int:
    """The response of a list that no pair ranks below another (the lowest such index)."""
    beaten = set(worse)
    top = [b for b in better if b not in beaten]
    if not top:
        raise ValueError(f"the pairs {list(zip(better, worse))} rank every response below another; "
                         "a ranking has a best response")
    return min(top)


class RRHFTask(SFTTask):
    name = "rrhf"

    def collate(self, examples):
        if self.tokenizer.pad_token_id is None:
            raise ValueError("pad_id is None; give the tokenizer a pad token")
        batch = collate_comparisons(examples, self.tokenizer.pad_token_id)
        best, offset = [], 0
        for ex in examples:
            best.append(offset + best_of_list(ex["better"], ex["worse"]))
            offset += len(ex["seqs"])
        batch["best"] = torch.tensor(best, dtype=torch.long)
        return batch

    def normalizer(self, examples) -> float:
        return float(len(examples))  # lists in the global batch

    def _loss(self, model, batch, num_lists):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        lp = token_logprobs(logits.float(), batch["input_ids"])  # (S, T-1): token t+1 given its prefix
        r = self.cfg.rrhf
        loss, st = rrhf_loss(lp, batch["loss_mask"][:, 1:], batch["better"], batch["worse"], batch["best"],
                             rank_weight=r.rank_weight, sft_weight=r.sft_weight, length_penalty=r.length_penalty,
                             num_lists=num_lists)
        sums = {"rank_sum": float(st["rank_sum"]), "sft_sum": float(st["sft_sum"]), "correct": float(st["correct"]),
                "lists": float(batch["best"].numel()), "pairs": float(batch["better"].numel()),
                "best_score_sum": float(st["p"][batch["best"]].sum())}
        sums["loss_sum"] = r.rank_weight * sums["rank_sum"] + r.sft_weight * sums["sft_sum"]
        return loss, sums

    def loss(self, model, batch, normalizer):
        return self._loss(model, batch, normalizer)

    @staticmethod
    def _metrics(prefix: str, sums) -> dict:
        lists, pairs = max(sums["lists"], 1.0), max(sums["pairs"], 1.0)
        return {f"{prefix}/loss": sums["loss_sum"] / lists, f"{prefix}/rank_loss": sums["rank_sum"] / lists,
                f"{prefix}/sft_loss": sums["sft_sum"] / lists, f"{prefix}/rank_accuracy": sums["correct"] / pairs,
                f"{prefix}/best_score": sums["best_score_sum"] / lists}

    def train_metrics(self, sums):
        return self._metrics("train", sums)

    def eval_keys(self):
        return SUM_KEYS

    def eval_sums(self, model, batch):
        return self._loss(model, batch, 1.0)[1]

    def eval_metrics(self, sums):
        return dict(self._metrics("eval", sums), **{"eval/lists": sums["lists"], "eval/pairs": sums["pairs"]})

    def export_info(self, summary) -> dict:
        """What rayrlhf.json of the export records."""
        r = self.cfg.rrhf
        return {"stage": "rrhf", "rank_weight": r.rank_weight, "sft_weight": r.sft_weight,
                "length_penalty": r.length_penalty, "summary": summary}
