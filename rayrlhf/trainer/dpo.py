"""Direct preference optimisation: a causal LM trained on preference pairs against a frozen
reference (Rafailov et al. 2023), with the IPO and conservative (cDPO) variants.

The examples are the RM stage's (``encode_pair_records``, each ranked list as its pairs), and
the loop is the one every supervised stage shares. The reference's sequence logprobs (the sum
over response tokens) are computed once, before the first step, for every pair of the train
and eval sets, each rank its own share, then shared by all ranks and kept with the examples.
The reference is the starting weights: with LoRA adapters the base model with the adapters
switched off (no second model); without them the model before its first update (the same
folder, frozen), also when a run resumes, since the weights are computed before the
checkpoint is loaded.
"""
from __future__ import annotations

import contextlib
import math

import torch

from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.algo.losses import dpo_loss
from rayrlhf.trainer.rm import collate_comparisons
from rayrlhf.trainer.sft import SFTTask

SUM_KEYS = ("loss_sum", "pairs", "correct", "chosen_reward_sum", "rejected_reward_sum", "chosen_logp_sum",
            "rejected_logp_sum")


def sequence_logps(model, batch) -> torch.Tensor:
    """Sum of the response tokens' logprobs of every sequence. Shape: (S,)."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    lp = token_logprobs(logits, batch["input_ids"])  # (S, T-1): token t+1 given its prefix
    return (lp * batch["loss_mask"][:, 1:].to(lp.dtype)).sum(-1)


class DPOTask(SFTTask):
    name = "dpo"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.reference_batches = 0  # forward passes of the reference (counted for tests and logs)

    def collate(self, examples):
        if self.tokenizer.pad_token_id is None:
            raise ValueError("pad_id is None; give the tokenizer a pad token")
        batch = collate_comparisons(examples, self.tokenizer.pad_token_id)
        if all("ref" in ex for ex in examples):
            batch["ref_logps"] = torch.tensor([x for ex in examples for x in ex["ref"]], dtype=torch.float32)
        return batch

    def normalizer(self, examples) -> float:
        return float(sum(len(ex["better"]) for ex in examples))

    def prepare_reference(self, engine, info, *example_lists) -> None:
        """Store the reference's sequence logprobs in every example (``ex["ref"]``, one per
        sequence). Rank r scores examples r, r + world, ...; every rank runs the same number of
        forward passes (a sharded model gathers its layers in each), then all ranks share them."""
        from rayrlhf.engine.lora import adapters_disabled, is_adapted

        mb = engine.s.forward_micro_batch_size
        off = adapters_disabled(engine.model) if is_adapted(engine.model) else contextlib.nullcontext()
        with off:
            for examples in example_lists:
                if not examples:
                    continue
                idx = list(range(info.rank, len(examples), info.world))
                chunks = math.ceil(math.ceil(len(examples) / info.world) / mb)
                mine = {}
                for c in range(chunks):
                    part = idx[c * mb:(c + 1) * mb]
                    exs = [examples[i] for i in part] or examples[:1]
                    out = engine.evaluate_batch(self.collate([{k: v for k, v in ex.items() if k != "ref"}
                                                              for ex in exs]), sequence_logps).float().cpu()
                    self.reference_batches += 1
                    pos = 0
                    for i in part:
                        n = len(examples[i]["seqs"])
                        mine[i] = out[pos:pos + n].tolist()
                        pos += n
                for shard in info.gather(mine):
                    for i, ref in shard.items():
                        examples[i]["ref"] = ref

    def _pairs(self, model, batch):
        pi = sequence_logps(model, batch).float()
        ref = batch["ref_logps"]
        b, w = batch["better"], batch["worse"]
        d = self.cfg.dpo
        loss_type = "ipo" if d.loss == "ipo" else "sigmoid"
        ls = d.label_smoothing if d.loss == "cdpo" else 0.0
        # A soft label p (rayrlhf label, aggregated annotators) is the target probability of the
        # chosen side, flipped with probability ls under cDPO: q = p (1 - ls) + (1 - p) ls.
        p = batch["p"]
        ls = 1.0 - (p * (1.0 - ls) + (1.0 - p) * ls)
        return pi[b], pi[w], ref[b], ref[w], dict(beta=d.beta, label_smoothing=ls, loss_type=loss_type,
                                                  margin=batch["margin"], weights=batch["weight"])

    def _sums(self, loss_sum, pc, pr, rc, rr) -> dict:
        beta = self.cfg.dpo.beta
        with torch.no_grad():
            chosen, rejected = beta * (pc - rc), beta * (pr - rr)
            return {"loss_sum": float(loss_sum), "pairs": float(pc.numel()),
                    "correct": float((chosen > rejected).float().sum()),
                    "chosen_reward_sum": float(chosen.sum()), "rejected_reward_sum": float(rejected.sum()),
                    "chosen_logp_sum": float(pc.sum()), "rejected_logp_sum": float(pr.sum())}

    def loss(self, model, batch, normalizer):
        pc, pr, rc, rr, kw = self._pairs(model, batch)
        loss, _ = dpo_loss(pc, pr, rc, rr, num_pairs=normalizer, **kw)
        return loss, self._sums(loss.detach() * normalizer, pc, pr, rc, rr)

    @staticmethod
    def _metrics(prefix: str, sums) -> dict:
        n = max(sums["pairs"], 1.0)
        chosen, rejected = sums["chosen_reward_sum"] / n, sums["rejected_reward_sum"] / n
        return {f"{prefix}/loss": sums["loss_sum"] / n, f"{prefix}/rewards/chosen": chosen,
                f"{prefix}/rewards/rejected": rejected, f"{prefix}/rewards/accuracies": sums["correct"] / n,
                f"{prefix}/rewards/margins": chosen - rejected,
                f"{prefix}/logps/chosen": sums["chosen_logp_sum"] / n,
                f"{prefix}/logps/rejected": sums["rejected_logp_sum"] / n}

    def train_metrics(self, sums):
        return self._metrics("train", sums)

    def eval_keys(self):
        return SUM_KEYS

    def eval_sums(self, model, batch):
        pc, pr, rc, rr, kw = self._pairs(model, batch)
        loss, _ = dpo_loss(pc, pr, rc, rr, num_pairs=1.0, **kw)
        return self._sums(loss, pc, pr, rc, rr)

    def eval_metrics(self, sums):
        return dict(self._metrics("eval", sums), **{"eval/pairs": sums["pairs"]})

    def export_info(self, summary) -> dict:
        """What rayrlhf.json of the export records."""
        return {"stage": "dpo", "loss": self.cfg.dpo.loss, "beta": self.cfg.dpo.beta, "summary": summary}
