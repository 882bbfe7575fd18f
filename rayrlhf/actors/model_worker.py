"""One actor class for every model role that runs forward passes on rollout batches.

``kind`` selects the model and what ``update`` optimises:
  policy     causal LM; logprobs; clipped PPO policy loss, or with hp objective=sft the NLL of
             kept samples (rejection sampling) (trainable, a DDP group of N)
  critic     scalar head on every token; values; clipped value loss (trainable)
  reference  the frozen initial policy; logprobs for the KL term (and DPO)
The algorithm itself (losses, GAE, KL) lives in ``rayrlhf.algo``; this class only moves
tensors through models, optimizers and the process group.
"""
from __future__ import annotations

import os
import time

import torch
import torch.distributed as dist

from rayrlhf.algo.kl import kl_penalty
from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.algo.losses import ppo_policy_loss, value_loss

KINDS = ("policy", "critic", "reference")


class ModelWorker:
    def __init__(self, kind: str, model_path: str, hp: dict, rank: int = 0, world: int = 1, name: str = "",
                 trust_remote_code: bool = False, dtype: str = "float32", seed: int = 0, num_threads: int = 1):
        from rayrlhf.models import load_causal_lm, load_scalar_model, load_tokenizer
        from rayrlhf.utils.quiet import quiet_libraries

        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
        quiet_libraries()
        torch.set_num_threads(max(1, num_threads))
        torch.manual_seed(seed)
        self.kind, self.rank, self.world, self.name, self.hp = kind, rank, world, name or kind, dict(hp)
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        if kind == "critic":
            self.model = load_scalar_model(model_path, dtype, trust_remote_code, pad_token_id=self.tokenizer.pad_token_id)
        else:
            self.model = load_causal_lm(model_path, dtype, trust_remote_code)
        self.trainable = kind != "reference"
        self.ddp = None
        self.optimizer = None
        if self.trainable:
            from rayrlhf.trainer.optim import build_optimizer

            self.optimizer = build_optimizer(self.model, hp["lr"], hp.get("weight_decay", 0.0), hp.get("betas", (0.9, 0.95)))
            self.model.train()
        else:
            self.model.eval()
            self.model.requires_grad_(False)

    def __repr__(self) -> str:
        return f"ModelWorker({self.name})"

    # -- process group ---------------------------------------------------------------------
    def node_address(self) -> str:
        import ray

        return ray.util.get_node_ip_address()

    def free_port(self) -> int:
        import socket

        with socket.socket() as s:
            s.bind(("", 0))
            return s.getsockname()[1]

    def setup_group(self, master_addr: str, master_port: int) -> bool:
        """Join the role's torch.distributed process group (gloo on CPU, NCCL on GPU); each actor
        is its own process, so the default group is this role's group."""
        if self.world == 1:
            return True
        from datetime import timedelta

        from rayrlhf.weight_sync import make_store

        backend = "nccl" if torch.cuda.is_available() else "gloo"
        # Our own store, so that on a local cluster rank 0 listens on loopback only.
        store = make_store(master_addr, master_port, self.world, self.rank == 0, timedelta(minutes=10))
        dist.init_process_group(backend, store=store, rank=self.rank, world_size=self.world)
        from torch.nn.parallel import DistributedDataParallel

        self.ddp = DistributedDataParallel(self.model)
        return True

    # -- forward passes ----------------------------------------------------------------------
    def _logits(self, model, batch, temperature: float | None = None):
        logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits.float()
        # The rollout samples from softmax(logits / T): the ratio and the KL must use that policy.
        t = self.hp.get("temperature", 1.0) if temperature is None else temperature
        return logits / t if t and t != 1.0 else logits

    def _values(self, model, batch):
        inner = model.module if hasattr(model, "module") else model
        base = getattr(inner, inner.base_model_prefix)
        hidden = base(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).last_hidden_state
        # V(s_t) for column t: the state after tokens 0..t, before token t+1 is generated.
        return inner.score(hidden[:, :-1]).float().squeeze(-1)

    @torch.no_grad()
    def forward(self, batch: dict, micro_batch: int = 64, temperature: float | None = None) -> torch.Tensor:
        """logprobs (policy, reference) or values (critic); Shape: (B, T-1)."""
        self.model.eval()
        outs = []
        for i in range(0, batch["input_ids"].shape[0], micro_batch):
            mb = {k: v[i:i + micro_batch] for k, v in batch.items() if k in ("input_ids", "attention_mask")}
            if self.kind == "critic":
                outs.append(self._values(self.model, mb))
            else:
                outs.append(token_logprobs(self._logits(self.model, mb, temperature), mb["input_ids"]))
        if self.trainable:
            self.model.train()
        return torch.cat(outs, dim=0) * batch["response_mask"]

    def probe(self, token_ids: list[int]) -> list[float]:
        """Logprob of each token after the first: compared with the rollout engine's after a sync."""
        ids = torch.tensor([token_ids])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": torch.ones(1, len(token_ids) - 1)}
        return self.forward(batch, temperature=1.0)[0].tolist()

    # -- updates -----------------------------------------------------------------------------
    def update(self, minibatches: list[dict], num_tokens: list[float]) -> dict:
        """One optimizer step per mini-batch (this worker's rows of it); returns mean stats.

        ``num_tokens[i]`` is the response-token count of global mini-batch i over all workers:
        each rank divides its token sum by it and DDP averages, so the step equals the
        full-batch step whatever the number of workers.
        """
        model = self.ddp or self.model
        self.model.train()
        totals: dict[str, float] = {}
        t0 = time.perf_counter()
        for mb, n_tok in zip(minibatches, num_tokens):
            self.optimizer.zero_grad(set_to_none=True)
            loss, stats = self._loss(model, mb, n_tok)
            (loss * self.world).backward()
            grad_norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.hp.get("max_grad_norm") or float("inf"))
            stats["grad_norm"] = float(grad_norm)
            stats["loss"] = float(loss.detach()) * self.world
            # The gradient norm is taken after DDP's all-reduce, so every rank skips together.
            if not torch.isfinite(grad_norm):
                self.optimizer.zero_grad(set_to_none=True)
                stats["skipped"] = 1.0
            else:
                self.optimizer.step()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        out = {k: v / max(1, len(minibatches)) for k, v in totals.items()}
        out["update_seconds"] = time.perf_counter() - t0
        return out

    def _loss(self, model, mb: dict, n_tok: float):
        mask = mb["response_mask"]
        if self.hp.get("objective") == "sft":
            # Rejection-sampling fine-tuning (Llama 2, 3.2.3): the NLL of the kept responses at
            # temperature 1, prompt tokens masked, normalised by the global token count.
            logprobs = token_logprobs(self._logits(model, mb, 1.0), mb["input_ids"])
            loss = -(logprobs * mask).sum() / n_tok
            return loss, {"nll": float(loss.detach()) * self.world}
        if self.kind == "critic":
            values = self._values(model, mb)
            loss, stats = value_loss(values, mb["values"], mb["returns"], mask, clip_range=self.hp.get("value_clip"),
                                     num_tokens=n_tok)
            return loss, {k: float(v) for k, v in stats.items()}
        logits = self._logits(model, mb)
        logprobs = token_logprobs(logits, mb["input_ids"])
        loss, stats = ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask,
                                      clip_eps=self.hp["clip_eps"], clip_eps_high=self.hp.get("clip_eps_high"),
                                      dual_clip=self.hp.get("dual_clip"), num_tokens=n_tok)
        stats = {k: float(v) for k, v in stats.items()}
        if self.hp.get("kl_in") == "loss":
            # KL as a loss term (Shao et al. 2024, eq. 3, k3 estimator) instead of in the reward.
            kl = kl_penalty(logprobs, mb["ref_logprobs"], self.hp.get("kl_estimator", "k3"))
            kl_loss = (kl * mask).sum() / n_tok
            loss = loss + self.hp["kl_coef"] * kl_loss
            stats["kl_loss"] = float(kl_loss.detach()) * self.world
        entropy_coef = self.hp.get("entropy_coef", 0.0)
        if entropy_coef:
            from rayrlhf.algo.logprobs import entropy_from_logits

            ent = entropy_from_logits(logits)[:, :-1]
            ent_term = (ent * mask).sum() / n_tok
            loss = loss - entropy_coef * ent_term
            stats["entropy"] = float(ent_term.detach()) * self.world
        return loss, stats

    def set_lr(self, lr: float) -> None:
        for g in self.optimizer.param_groups:
            g["lr"] = lr

    # -- weights and checkpoints ---------------------------------------------------------------
    def named_weights(self) -> dict:
        """The full state dict on CPU (rank 0 holds complete weights after each update)."""
        return {k: v.detach().to("cpu").contiguous() for k, v in self.model.state_dict().items()}

    def named_weights_and_checksum(self) -> tuple[dict, str]:
        """Weights plus their checksum; called with num_returns=2 so the driver fetches only the
        checksum and passes the weights on to the rollout workers by reference."""
        from rayrlhf.rollout.checksum import weights_checksum

        weights = self.named_weights()
        return weights, weights_checksum(weights)

    def join_broadcast(self, addr: str, port: int, world: int, backend: str = "gloo") -> bool:
        """Rank 0 of the weight-broadcast group to the rollout workers (``rayrlhf.weight_sync``)."""
        from rayrlhf.weight_sync import make_group

        self._bcast = make_group(backend, addr, port, 0, world)
        return True

    def weights_meta_and_checksum(self) -> tuple[list, str]:
        from rayrlhf.rollout.checksum import weights_checksum
        from rayrlhf.weight_sync import tensor_meta

        weights = self.named_weights()
        return tensor_meta(weights), weights_checksum(weights)

    def broadcast_weights(self, bucket_bytes: int) -> int:
        from rayrlhf.weight_sync import send

        return send(self._bcast, {k: v.detach() for k, v in self.model.state_dict().items()}, bucket_bytes)

    def save(self, folder: str) -> None:
        """Weights (safetensors), optimizer state and this rank's RNG; rank 0 writes the model."""
        from safetensors.torch import save_model

        from rayrlhf.checkpoint import rng_state

        os.makedirs(folder, exist_ok=True)
        if self.rank == 0:
            save_model(self.model, os.path.join(folder, f"{self.kind}.safetensors"))
            if self.optimizer is not None:
                torch.save(self.optimizer.state_dict(), os.path.join(folder, f"{self.kind}-optimizer.pt"))
        torch.save(rng_state(), os.path.join(folder, f"{self.kind}-rng-rank{self.rank}.pt"))

    def load(self, folder: str) -> None:
        from safetensors.torch import load_model

        from rayrlhf.checkpoint import set_rng_state

        load_model(self.model, os.path.join(folder, f"{self.kind}.safetensors"))
        opt = os.path.join(folder, f"{self.kind}-optimizer.pt")
        if self.optimizer is not None and os.path.exists(opt):
            self.optimizer.load_state_dict(torch.load(opt, weights_only=True))
        rng = os.path.join(folder, f"{self.kind}-rng-rank{self.rank}.pt")
        if os.path.exists(rng):
            set_rng_state(torch.load(rng, weights_only=True))

    def export(self, out_dir: str, extra: dict | None = None) -> str:
        from rayrlhf.models import export_hf

        return export_hf(self.model, self.tokenizer, out_dir, extra=extra)

    def ping(self) -> str:
        return self.name
