"""One actor class for every model role that runs forward passes on rollout batches.

``kind`` selects the model and what ``update`` optimises:
  policy     causal LM; logprobs; clipped PPO policy loss, or in rounds of sampling
             (``PolicyLoss.objective``) the NLL of kept samples (rejection sampling), DPO on
             best/worst pairs or RRHF on ranked lists (trainable, a DDP or FSDP group of N)
  critic     scalar head on every token; values; clipped value loss (trainable)
  reference  the frozen initial policy; logprobs for the KL term (and DPO)
The algorithm itself (losses, GAE, KL) lives in ``rayrlhf.algo``; devices, wrapping, precision
and micro-batches live in ``rayrlhf.engine``; this class only says which model and which loss.
It runs as a Ray actor and, unchanged, as a plain object (tests/gpu).

Under FSDP the methods in ``COLLECTIVE`` gather sharded weights, so every rank must call them
together (``rayrlhf.placement.Leader`` does); rank 0 returns the result.
"""
from __future__ import annotations

import os

import torch
import torch.distributed as dist

from rayrlhf.algo.kl import kl_penalty
from rayrlhf.algo.logprobs import token_logprobs
from rayrlhf.algo.losses import dpo_loss, ppo_policy_loss, ranked_list_pairs, rrhf_loss, value_loss
from rayrlhf.engine.settings import CriticLoss, EngineSettings, PolicyLoss

KINDS = ("policy", "critic", "reference")


class ModelWorker:
    COLLECTIVE = frozenset({"probe", "named_weights", "named_weights_and_checksum", "broadcast_weights", "export"})
    """Methods every rank of a sharded group must enter together."""

    def __init__(self, kind: str, model_path: str, engine: EngineSettings, loss: PolicyLoss | CriticLoss | None = None,
                 rank: int = 0, world: int = 1, name: str = "", trust_remote_code: bool = False, seed: int = 0,
                 num_threads: int = 1):
        from rayrlhf.models import load_causal_lm, load_scalar_model, load_tokenizer
        from rayrlhf.utils.quiet import quiet_libraries

        if kind not in KINDS:
            raise ValueError(f"kind {kind!r}: expected one of {KINDS}")
        quiet_libraries()
        torch.set_num_threads(max(1, num_threads))
        torch.manual_seed(seed)
        self.kind, self.rank, self.world, self.name = kind, rank, world, name or kind
        from rayrlhf.utils.ray_init import note_restart

        note_restart(self.name)
        self.settings, self.loss_cfg = engine, loss
        if kind == "policy" and not isinstance(loss, PolicyLoss):
            raise TypeError("a policy worker needs loss=PolicyLoss(...)")
        if kind == "critic" and not isinstance(loss, CriticLoss):
            raise TypeError("a critic worker needs loss=CriticLoss(...)")
        self.trainable = kind != "reference"
        self.temperature = loss.temperature if isinstance(loss, PolicyLoss) else 1.0
        self.tokenizer = load_tokenizer(model_path, trust_remote_code)
        # Trained models load in float32 (the master weights); frozen ones, and the frozen
        # base under LoRA adapters, in the compute dtype.
        load_dtype = engine.load_dtype(self.trainable)
        if kind == "critic":
            from rayrlhf.models.value import TokenValues

            self._hf = load_scalar_model(model_path, load_dtype, trust_remote_code, pad_token_id=self.tokenizer.pad_token_id)
            self._module = TokenValues(self._hf)
        else:
            self._hf = self._module = load_causal_lm(model_path, load_dtype, trust_remote_code)
        if self.trainable:
            # PPO's ratio is 1 at the first mini-batch only if the update computes what the
            # rollout and the old-logprob pass computed: no dropout in RL.
            _disable_dropout(self._hf)
        self.engine = None
        if world == 1:
            self._build_engine()

    def _build_engine(self) -> None:
        from rayrlhf.engine import Engine

        self.engine = Engine(self._module, self.settings, rank=self.rank, world=self.world,
                             trainable=self.trainable, hf_model=self._hf)

    @property
    def model(self):
        """The transformers model (unwrapped; sharded in place under FSDP)."""
        return self._hf

    @property
    def optimizer(self):
        return self.engine.optimizer

    def __repr__(self) -> str:
        return f"ModelWorker({self.name})"

    # -- process groups ----------------------------------------------------------------------
    def host_group(self, purpose: str, member_nodes: list[str] | None = None) -> tuple[str, int]:
        """Rank 0 of a group: start the group's TCPStore and return (address, port) for the
        members. ``purpose`` is "train" (this role's group, ``setup_group``) or "broadcast"
        (``join_broadcast``). The store listens, on a port the OS picked, before the port is
        returned, and this actor keeps it for the group: no other process can take the port in
        between, and two groups created back to back never get the same one. The address is
        127.0.0.1 when all ``member_nodes`` (Ray node ids) are this actor's node, else the
        node's IP (``rayrlhf.placement.actors.group_address``); the store listens on it only."""
        from datetime import timedelta

        from rayrlhf.placement.actors import group_address
        from rayrlhf.weight_sync import host_store

        if purpose not in ("train", "broadcast"):
            raise ValueError(f"purpose {purpose!r}: expected 'train' or 'broadcast'")
        addr = group_address(member_nodes)
        store = host_store(addr, timedelta(minutes=10) if purpose == "train" else timedelta(seconds=300))
        self._hosted = {**getattr(self, "_hosted", {}), purpose: store}
        return addr, store.port

    def _hosted_store(self, purpose: str, port: int):
        """The store ``host_group`` started for ``purpose`` on ``port`` (handed over once), or None."""
        hosted = getattr(self, "_hosted", {})
        store = hosted.get(purpose)
        if store is None or store.port != port:
            return None
        del hosted[purpose]
        return store

    def setup_group(self, master_addr: str, master_port: int) -> bool:
        """Join the role's torch.distributed process group (NCCL for CUDA tensors, gloo on
        CPU), then build the engine on it; each actor is its own process, so the default group
        is this role's group. Rank 0 uses the store ``host_group("train")`` started, if any,
        else starts one at master_addr:master_port."""
        from datetime import timedelta

        from rayrlhf.engine.device import backend_for, resolve_device
        from rayrlhf.weight_sync import make_store

        s = self.settings
        device = resolve_device(s.wants_gpu, s.role, s.config_key, s.fake_gpus)
        if device.type == "cuda":
            torch.cuda.set_device(device)
        store = self._hosted_store("train", master_port) if self.rank == 0 else None
        if store is None:
            store = make_store(master_addr, master_port, self.world, self.rank == 0, timedelta(minutes=10))
        dist.init_process_group(backend_for(device), store=store, rank=self.rank, world_size=self.world)
        self._build_engine()
        return True

    # -- forward passes ----------------------------------------------------------------------
    def _logprobs(self, model, mb, temperature: float) -> tuple[torch.Tensor, torch.Tensor]:
        """(logprobs, logits) under softmax(logits / T), in float32."""
        logits = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"]).logits.float()
        # The rollout samples from softmax(logits / T): the ratio and the KL must use that policy.
        if temperature and temperature != 1.0:
            logits = logits / temperature
        return token_logprobs(logits, mb["input_ids"]), logits

    def _forward_fn(self, temperature: float):
        if self.kind == "critic":
            return lambda model, mb: model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
        return lambda model, mb: self._logprobs(model, mb, temperature)[0]

    def forward(self, batch: dict, micro_batch: int | None = None, temperature: float | None = None) -> torch.Tensor:
        """logprobs (policy, reference) or values (critic); Shape: (B, T-1)."""
        t = self.temperature if temperature is None else temperature
        inputs = {k: batch[k] for k in ("input_ids", "attention_mask")}
        return self.engine.forward(inputs, self._forward_fn(t), micro_batch) * batch["response_mask"]

    def reference_forward(self, batch: dict, micro_batch: int | None = None,
                          temperature: float | None = None) -> torch.Tensor:
        """The reference policy's logprobs from this policy's own base weights, its LoRA adapters
        switched off: what a separate reference worker on the same model folder computes."""
        from rayrlhf.engine.lora import adapters_disabled, is_adapted

        if self.kind != "policy" or not is_adapted(self._hf):
            raise ValueError(f"{self.name}: reference logprobs come from a policy that trains LoRA adapters")
        with adapters_disabled(self._hf):
            return self.forward(batch, micro_batch, temperature)

    def probe(self, token_ids: list[int]) -> list[float]:
        """Logprob of each token after the first: compared with the rollout engine's after a sync."""
        ids = torch.tensor([token_ids])
        batch = {"input_ids": ids, "attention_mask": torch.ones_like(ids), "response_mask": torch.ones(1, len(token_ids) - 1)}
        return self.forward(batch, temperature=1.0)[0].tolist()

    # -- updates -----------------------------------------------------------------------------
    def update(self, minibatches: list[dict], num_tokens: list[float],
               loss_tokens: list[float] | None = None) -> dict:
        """One optimizer step per mini-batch (this worker's rows of it); returns mean stats.

        ``num_tokens[i]`` is the response-token count of global mini-batch i over all workers
        (its list count for the dpo and rrhf objectives): each rank divides its sum by it and
        DDP/FSDP average, so the step equals the full-batch step whatever the number of workers
        and micro-batches. ``loss_tokens[i]``,
        when given, replaces that count as the policy loss's divisor (a constant normaliser,
        ``ppo.loss_agg``); the stats stay token means.

        All or nothing: a non-finite loss (on any rank) or gradient norm in any mini-batch
        stops the update there (every rank at the same mini-batch: the ranks agree before each
        step) and puts back the weights and optimizer state the update started from, bitwise;
        ``skipped`` is then 1, ``skipped_at`` the (1-based) mini-batch and the other stats that
        mini-batch's. ``rollback`` undoes
        the last update later, when another role's update of the same iteration failed.
        """
        import time

        totals: dict[str, float] = {}
        t0 = time.perf_counter()
        self.engine.snapshot()
        done, failed = 0, None
        divisors = loss_tokens or num_tokens
        for i, (mb, n_tok, n_loss) in enumerate(zip(minibatches, num_tokens, divisors)):
            stats = self.engine.step(mb, lambda model, micro, n=n_tok, d=n_loss: self._loss(model, micro, n, d))
            if stats.pop("skipped"):
                failed = i + 1
                totals = {k: float(v) for k, v in stats.items()}  # the failed mini-batch's stats
                break
            done += 1
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + float(v)
        if failed:
            self.engine.restore()
            out = dict(totals, skipped=1.0, skipped_at=float(failed))
        else:
            out = {k: v / max(1, done) for k, v in totals.items()}
            out["skipped"] = 0.0
        out["update_seconds"] = time.perf_counter() - t0
        return out

    def rollback(self) -> bool:
        """Undo the last ``update`` whole (weights and optimizer state bitwise as before it)."""
        self.engine.restore()
        return True

    def _loss(self, model, mb: dict, n_tok: float, n_loss: float | None = None):
        """This micro-batch's share of the global loss, and its stats as shares too: a mean
        over the micro-batch's tokens is weighted by its tokens / the global count x world, so
        adding micro-batches and averaging ranks gives the token mean of the mini-batch."""
        cfg = self.loss_cfg
        if self.kind == "policy" and cfg.objective in ("dpo", "rrhf"):
            return self._list_loss(model, mb, n_tok)
        mask = mb["response_mask"]
        share = float(mask.sum()) / n_tok * self.world
        if self.kind == "critic":
            values = model(input_ids=mb["input_ids"], attention_mask=mb["attention_mask"])
            loss, stats = value_loss(values, mb["values"], mb["returns"], mask, clip_range=cfg.value_clip,
                                     num_tokens=n_tok)
            out = {k: float(v) * share for k, v in stats.items()}
            out["loss"] = float(loss.detach()) * self.world
            return loss, out
        if cfg.objective == "sft":
            # Rejection-sampling fine-tuning (Llama 2, 3.2.3): the NLL of the kept responses at
            # temperature 1, prompt tokens masked, normalised by the global token count.
            logprobs, _ = self._logprobs(model, mb, 1.0)
            loss = -(logprobs * mask).sum() / n_tok
            return loss, {"nll": float(loss.detach()) * self.world, "loss": float(loss.detach()) * self.world}
        logprobs, logits = self._logprobs(model, mb, cfg.temperature)
        n_loss = n_loss or n_tok
        loss, stats = ppo_policy_loss(logprobs, mb["old_logprobs"], mb["advantages"], mask,
                                      clip_eps=cfg.clip_eps, clip_eps_high=cfg.clip_eps_high,
                                      dual_clip=cfg.dual_clip, num_tokens=n_loss)
        out = {k: float(v) * share for k, v in stats.items()}
        if cfg.kl_in == "loss":
            # KL as a loss term (Shao et al. 2024, eq. 3) instead of in the reward.
            kl = kl_penalty(logprobs, mb["ref_logprobs"], cfg.kl_estimator)
            kl_loss = (kl * mask).sum() / n_tok
            loss = loss + cfg.kl_coef * kl_loss
            out["kl_loss"] = float(kl_loss.detach()) * self.world
        if cfg.entropy_coef:
            from rayrlhf.algo.logprobs import entropy_from_logits

            ent_term = (entropy_from_logits(logits)[:, :-1] * mask).sum() / n_tok
            loss = loss - cfg.entropy_coef * ent_term
            out["entropy"] = float(ent_term.detach()) * self.world
        out["loss"] = float(loss.detach()) * self.world
        return loss, out

    def _list_loss(self, model, mb: dict, n_lists: float):
        """Online DPO and RRHF. Each row of ``mb`` is one prompt's list of G responses:
        ``input_ids`` (L, G, T), ``response_mask`` (L, G, T-1); dpo: G = 2, the chosen first, and
        the reference's summed logprobs ``ref_logps`` (L, 2); rrhf: G = K and the responses'
        rewards ``scores`` (L, K). A list whose mask is all zero (a rank's padding) adds nothing.
        ``n_lists`` is the mini-batch's list count over all ranks: the loss is this micro-batch's
        share of the mean over lists, and the stats are shares too. Logprobs at temperature 1:
        both losses are defined on the model's own distribution."""
        L, G = mb["input_ids"].shape[:2]
        flat = {k: mb[k].flatten(0, 1) for k in ("input_ids", "attention_mask")}
        lp, _ = self._logprobs(model, flat, 1.0)
        mask = mb["response_mask"].flatten(0, 1).to(lp.dtype)
        real = mask.view(L, G, -1).sum((1, 2)) > 0  # (L,)
        scale = self.world / n_lists  # a sum over this micro-batch's lists -> its share of the mean
        cfg = self.loss_cfg
        if cfg.objective == "dpo":
            d = cfg.dpo
            seq = (lp * mask).sum(-1).view(L, 2)
            ref, w = mb["ref_logps"].to(seq.dtype), real.to(seq.dtype)
            loss, _ = dpo_loss(seq[:, 0], seq[:, 1], ref[:, 0], ref[:, 1], beta=d.beta,
                               label_smoothing=d.label_smoothing if d.loss == "cdpo" else 0.0,
                               loss_type="ipo" if d.loss == "ipo" else "sigmoid", weights=w, num_pairs=n_lists)
            with torch.no_grad():
                chosen, rejected = d.beta * (seq[:, 0] - ref[:, 0]), d.beta * (seq[:, 1] - ref[:, 1])
                out = {"rewards/chosen": float((chosen * w).sum()) * scale,
                       "rewards/rejected": float((rejected * w).sum()) * scale,
                       "rewards/accuracies": float(((chosen > rejected).to(w.dtype) * w).sum()) * scale,
                       "rewards/margins": float(((chosen - rejected) * w).sum()) * scale,
                       "logps/chosen": float((seq[:, 0] * w).sum()) * scale,
                       "logps/rejected": float((seq[:, 1] * w).sum()) * scale}
        else:
            r = cfg.rrhf
            better, worse, best = ranked_list_pairs(mb["scores"].view(L, G), real)
            dev = lp.device
            loss, st = rrhf_loss(lp, mask, better.to(dev), worse.to(dev), best.to(dev), rank_weight=r.rank_weight,
                                 sft_weight=r.sft_weight, length_penalty=r.length_penalty, num_lists=n_lists)
            out = {"rank_loss": float(st["rank_sum"]) * scale, "sft_loss": float(st["sft_sum"]) * scale}
        out["loss"] = float(loss.detach()) * self.world
        return loss, out

    # -- weights and checkpoints ---------------------------------------------------------------
    def named_weights(self) -> dict:
        """The full weights (each tied tensor once) on rank 0's CPU, in the configured dtype;
        other ranks take part in the gathering under FSDP and return {}."""
        out: dict = {}
        for bucket in self.engine.iter_full_weights(256 << 20):
            if self.rank == 0:
                # A copy: on CPU the bucket may alias the live parameters.
                out.update({k: v.to("cpu", copy=True).contiguous() for k, v in bucket.items()})
        return out

    def named_weights_and_checksum(self) -> tuple[dict, str]:
        """Weights plus their checksum; called with num_returns=2 so the driver fetches only the
        checksum and passes the weights on to the rollout workers by reference."""
        from rayrlhf.rollout.checksum import weights_checksum

        weights = self.named_weights()
        return weights, weights_checksum(weights) if self.rank == 0 else ""

    def join_broadcast(self, addr: str, port: int, world: int, backend: str = "gloo") -> bool:
        """Rank 0 of the weight-broadcast group to the rollout workers (``rayrlhf.weight_sync``),
        on the store ``host_group("broadcast")`` started, if any."""
        from rayrlhf.weight_sync import make_group

        self._bcast = make_group(backend, addr, port, 0, world, store=self._hosted_store("broadcast", port))
        return True

    def weights_meta(self) -> list:
        """(name, full shape, dtype) of every weight ``broadcast_weights`` sends; no gathering."""
        from rayrlhf.engine.state import export_state

        dtype = str(getattr(torch, self.settings.dtype)).removeprefix("torch.")
        return [(k, tuple(v.shape), dtype if v.is_floating_point() else str(v.dtype).removeprefix("torch."))
                for k, v in export_state(self._hf).items()]

    def broadcast_weights(self, bucket_bytes: int) -> dict:
        """Stream the weights to the rollout workers bucket by bucket (rank 0 broadcasts; under
        FSDP every rank gathers each bucket's tensors with it); rank 0 returns bytes and checksum."""
        from rayrlhf.engine.state import export_state, full_tensor
        from rayrlhf.models.load import DTYPES
        from rayrlhf.weight_sync import send_streamed

        named, dtype, device = export_state(self._hf), DTYPES[self.settings.dtype], self.engine.device

        def fetch(names):
            return [full_tensor(named[n], device, dtype) for n in names]

        group = getattr(self, "_bcast", None) if self.rank == 0 else None
        return send_streamed(group, self.weights_meta(), fetch, bucket_bytes)

    def save(self, folder: str) -> None:
        """Weights and optimizer state (safetensors + JSON, sharded under FSDP) and this rank's RNG."""
        from rayrlhf.checkpoint import save_rng

        self.engine.save(folder, self.kind)
        save_rng(os.path.join(folder, f"{self.kind}-rng-rank{self.rank}.pt"))

    def load(self, folder: str) -> dict | None:
        """Restore ``save``'s files. When the configured learning rate differs from the
        checkpoint's, the configured one applies from here on (``Engine.load``) and this returns
        both, ``{"checkpoint_lr", "lr"}``; else None."""
        from rayrlhf.checkpoint import load_rng

        old_lr = self.engine.load(folder, self.kind)
        load_rng(os.path.join(folder, f"{self.kind}-rng-rank{self.rank}.pt"))
        return None if old_lr is None else {"checkpoint_lr": old_lr, "lr": self.settings.lr}

    def export(self, out_dir: str, extra: dict | None = None) -> str | None:
        return self.engine.export(self.tokenizer, out_dir, extra=extra)

    def ping(self) -> str:
        return self.name


def _disable_dropout(model) -> None:
    """Dropout off everywhere: nn.Dropout modules (GPT-2 style) and the float rates attention
    layers keep as attributes (Llama, Qwen2: ``self.attention_dropout``), and in the config."""
    keys = ("attention_dropout", "attn_dropout", "hidden_dropout", "dropout", "dropout_p", "resid_pdrop",
            "embd_pdrop", "attn_pdrop")
    for m in model.modules():
        if isinstance(m, torch.nn.Dropout):
            m.p = 0.0
        for key in keys:
            if isinstance(getattr(m, key, None), float):
                setattr(m, key, 0.0)
    cfg = getattr(model, "config", None)
    for key in keys:
        if cfg is not None and isinstance(getattr(cfg, key, None), float):
            setattr(cfg, key, 0.0)
