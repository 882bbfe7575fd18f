"""``Engine``: one model on one worker, trained or frozen, whatever the device and strategy.

    engine = Engine(model, settings, rank=r, world=n)     # after the process group exists
    values = engine.forward(batch, lambda m, mb: m(**mb).logits)    # no grad, micro-batched
    stats = engine.step(batch, loss_fn)                   # one optimizer step, accumulated
    engine.save(folder, "policy"); engine.load(folder, "policy")
    for bucket in engine.iter_full_weights(bucket_bytes): ...   # sync to rollout workers
    engine.snapshot(); ...; engine.restore()             # undo steps bitwise (a skipped PPO iteration)

Role code never touches devices, wrappers or dtypes: batches come in on CPU and results go
back on CPU. Under FSDP every collective (the all-gather of each layer in a forward) must be
taken by every rank the same number of times, so the ranks agree on the number of
micro-batches first and a rank with fewer rows runs a zero-weighted one on a row it has.

A step is skipped whole when its gradient norm or any rank's loss is non-finite; the ranks
agree (one all-reduce of a flag) before any of them steps. ``snapshot``/``restore`` undo
several steps: the snapshot is a CPU copy of this rank's parameters (its local shards under
FSDP) and optimizer state, so it costs host memory of about 12 bytes per local trained
parameter with AdamW (float32 weights, exp_avg, exp_avg_sq), allocated once and reused; a
frozen base under LoRA adapters is not copied.

With ``settings.quantization`` (8bit, 4bit) the base's linear layers are replaced by
bitsandbytes' as they move onto the device (``rayrlhf.engine.quant``), before any adapter is
injected; a trained model then needs LoRA and ddp.
"""
from __future__ import annotations

import math

import torch
import torch.distributed as dist

from rayrlhf.engine.device import resolve_device, to_device
from rayrlhf.engine.settings import EngineSettings
from rayrlhf.engine.wrap import compute_context, wrap
from rayrlhf.models.load import DTYPES


class Engine:
    def __init__(self, model: torch.nn.Module, settings: EngineSettings, *, rank: int = 0, world: int = 1,
                 trainable: bool = True, device: torch.device | None = None, hf_model: torch.nn.Module | None = None):
        """``model`` on CPU, as loaded; ``hf_model`` the transformers model inside it when
        ``model`` is a wrapper (the critic's per-token value head), for export and checkpointing."""
        self.s = settings
        self.rank, self.world, self.trainable = rank, world, trainable
        self.device = resolve_device(settings.wants_gpu, settings.role, settings.config_key, settings.fake_gpus, device)
        self.module = model
        self.hf_model = hf_model if hf_model is not None else model
        self.optimizer = None
        self.scheduler = None
        self._snap: dict | None = None
        if settings.quantization != "none":
            self._quantize(trainable)
        if trainable:
            if settings.lora.enabled:
                from rayrlhf.engine.lora import apply_lora

                # Adapters (and a scalar head) train in float32; the frozen base keeps its dtype.
                apply_lora(self.hf_model, settings.lora, heads=tuple(h for h in ("score",) if hasattr(self.hf_model, h)))
            else:
                model.float()  # float32 master weights; the compute dtype comes from wrap()
            if settings.gradient_checkpointing:
                self.hf_model.config.use_cache = False  # no KV cache in training; silences transformers
                # Non-reentrant checkpointing composes with DDP, FSDP2 and frozen inputs.
                self.hf_model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
            if settings.strategy != "fsdp":
                model.to(self.device)
            self.model = wrap(model, settings.strategy, self.device, world, settings.dtype,
                              settings.cpu_offload, settings.reshard_after_forward)
            self.model.train()
            from rayrlhf.trainer.optim import build_optimizer

            self.optimizer = build_optimizer(self.model, settings.lr, settings.weight_decay, settings.betas)
        else:
            if settings.quantization == "none":
                model.to(dtype=DTYPES[settings.dtype])
            model.to(device=self.device)
            model.eval().requires_grad_(False)
            self.model = model

    def _quantize(self, trainable: bool) -> None:
        """The base's linear layers in 8-bit or 4-bit on the device (``rayrlhf.engine.quant``);
        a trained model's other frozen weights in float32, as peft prepares k-bit training."""
        from rayrlhf.engine.quant import quantize_linears, upcast_unquantized

        if trainable and not self.s.lora.enabled:
            raise ValueError(f"{self.s.config_key}.quantization: {self.s.quantization} needs lora.r > 0 "
                             "(quantised weights cannot train)")
        self.hf_model.to(dtype=DTYPES[self.s.dtype])
        quantize_linears(self.hf_model, self.s.quantization, self.s.dtype, self.device)
        if trainable:
            upcast_unquantized(self.hf_model)

    @property
    def sharded(self) -> bool:
        return self.trainable and self.s.strategy == "fsdp"

    def _compute(self):
        return compute_context(self.s.strategy if self.trainable else "fsdp", self.device, self.s.dtype)

    # -- micro-batches ---------------------------------------------------------------------------
    def _chunks(self, n: int, size: int) -> list[tuple[slice, bool]]:
        """(rows, is_padding) per micro-batch; every rank of a sharded model gets as many."""
        k = math.ceil(n / size) if n else 0
        if self.sharded and self.world > 1:
            t = torch.tensor([k], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MAX)
            k = int(t.item())
        if k and not n:
            raise ValueError(f"{self.s.role} rank {self.rank}: no rows while the other ranks have some; "
                             "give every worker at least one row")
        out = []
        for j in range(k):
            lo, hi = (j * n) // k, ((j + 1) * n) // k
            out.append((slice(lo, hi), False) if hi > lo else (slice(0, 1), True))
        return out

    @staticmethod
    def _rows(batch: dict, sl: slice) -> dict:
        return {k: (v[sl] if torch.is_tensor(v) and v.dim() > 0 else v) for k, v in batch.items()}

    @staticmethod
    def _n(batch: dict) -> int:
        return next(v.shape[0] for v in batch.values() if torch.is_tensor(v) and v.dim() > 0)

    # -- forward and step --------------------------------------------------------------------------
    @staticmethod
    def _by_length(batch: dict) -> torch.Tensor | None:
        """Row order longest first (stable) for right-padded token rows (a 2-D ``attention_mask``);
        None for other layouts (lists of responses, no mask), which keep their order."""
        mask = batch.get("attention_mask")
        if not torch.is_tensor(mask) or mask.dim() != 2:
            return None
        return torch.sort(mask.sum(dim=1), descending=True, stable=True).indices

    def _micro(self, batch: dict, sl: slice, order: torch.Tensor | None) -> dict:
        """The micro-batch of rows ``sl`` (of ``order`` when given), cut to its longest row: a
        short row pays for no column of another micro-batch's long rows."""
        if order is None:
            return self._rows(batch, sl)
        from rayrlhf.actors.batch import select_rows

        return select_rows(batch, order[sl])

    @torch.no_grad()
    def forward(self, batch: dict, fn, micro_batch_size: int | None = None) -> torch.Tensor:
        """``fn(model, micro_batch) -> tensor`` over the rows, in eval mode; float32, on CPU.

        Right-padded token rows go into micro-batches by length, each cut to its longest row;
        the outputs come back in the rows' order, zero-padded to the batch's width (per-token
        outputs of shape (B, T-1) or (B, T); causal attention makes each row's values those of
        the uncut batch, up to float rounding)."""
        was_training = self.model.training
        self.model.eval()
        order = self._by_length(batch)
        outs = []
        try:
            with self._compute():
                for sl, pad in self._chunks(self._n(batch), micro_batch_size or self.s.forward_micro_batch_size):
                    mb = self._micro(batch, sl, order)
                    out = fn(self.model, to_device(mb, self.device))
                    if not pad:
                        outs.append((out.float().cpu(), mb["attention_mask"].shape[1]))
        finally:
            self.model.train(was_training)
        if order is None:
            return torch.cat([o for o, _ in outs], dim=0)
        # A micro-batch of width w gave (b, w - k, ...): pad column 1 to the batch's T - k.
        full = batch["attention_mask"].shape[1]
        cat = torch.cat([torch.nn.functional.pad(o.movedim(1, -1), (0, full - w)).movedim(-1, 1) if o.dim() > 1
                         else o for o, w in outs], dim=0)
        out = torch.empty_like(cat)
        out[order] = cat
        return out

    @torch.no_grad()
    def evaluate_batch(self, batch: dict, fn):
        """``fn(model, batch)`` once, on the device, in eval mode; whatever it returns."""
        was_training = self.model.training
        self.model.eval()
        try:
            with self._compute():
                return fn(self.model, to_device(batch, self.device))
        finally:
            self.model.train(was_training)

    def step(self, batch: dict, loss_fn) -> dict:
        """One optimizer step on this rank's rows of a global mini-batch, split into
        micro-batches of ``micro_batch_size`` rows (see ``step_micro``). Right-padded token rows
        are grouped by length, each micro-batch cut to its longest row: the loss is a sum over
        tokens, so the grouping changes the step only by float rounding."""
        chunks = self._chunks(self._n(batch), self.s.micro_batch_size)
        order = self._by_length(batch)
        return self._step([(self._micro(batch, sl, order), pad) for sl, pad in chunks], loss_fn)

    def step_micro(self, micro_batches: list[dict], loss_fn) -> dict:
        """One optimizer step accumulated over ``micro_batches`` (made by the caller: every
        rank must bring as many).

        ``loss_fn(model, micro_batch) -> (loss, stats)``: ``loss`` is the micro-batch's share
        of the global mean (its sum divided by the global count), so micro-batches and ranks
        add up to the full-batch loss and the step equals the unaccumulated one; ``stats``
        are added up over micro-batches. A non-finite gradient norm (the same on every rank,
        taken after the reduction) skips the step whole: no weight, optimizer or scheduler
        change, ``skipped`` = 1. So does a non-finite loss on any rank: the ranks agree before
        stepping, so all of them step or none does.
        """
        return self._step([(mb, False) for mb in micro_batches], loss_fn)

    def _step(self, chunks: list[tuple[dict, bool]], loss_fn) -> dict:
        self.model.train()
        self.optimizer.zero_grad(set_to_none=True)
        totals: dict[str, float] = {}
        finite_loss = True
        for j, (mb, pad) in enumerate(chunks):
            with self._no_sync(j < len(chunks) - 1), self._compute():
                loss, stats = loss_fn(self.model, to_device(mb, self.device))
            if not pad:
                finite_loss = finite_loss and bool(torch.isfinite(loss.detach()).all())
            # DDP and FSDP average gradients over ranks; each rank's loss is a share of the
            # global sum, so scale by world to recover the full-batch gradient. A padding
            # micro-batch only keeps the ranks' collectives in step: it adds no gradient.
            (loss * (0.0 if pad else float(self.world))).backward()
            if not pad:
                for k, v in stats.items():
                    totals[k] = totals.get(k, 0.0) + float(v)
        grad_norm = self.clip_grad_norm()
        totals["grad_norm"] = grad_norm
        if self.agree(finite_loss and math.isfinite(grad_norm)):
            self.optimizer.step()
            if self.scheduler is not None:
                self.scheduler.step()
            totals["skipped"] = 0.0
        else:
            totals["skipped"] = 1.0
        self.optimizer.zero_grad(set_to_none=True)
        return totals

    def agree(self, ok: bool) -> bool:
        """True on every rank when ``ok`` holds on every rank of this engine's group (one
        all-reduce); ``ok`` itself with one worker."""
        if self.world > 1 and dist.is_available() and dist.is_initialized():
            t = torch.tensor([1 if ok else 0], device=self.device if self.device.type == "cuda" else "cpu")
            dist.all_reduce(t, op=dist.ReduceOp.MIN)
            return bool(t.item())
        return ok

    # -- undoing steps ---------------------------------------------------------------------------
    def _opt_tensors(self):
        """(param, key, local tensor) of every tensor in the optimizer state."""
        from rayrlhf.engine.state import _local

        for p, st in self.optimizer.state.items():
            for k, v in st.items():
                if torch.is_tensor(v):
                    yield p, k, _local(v)

    def snapshot(self) -> None:
        """Keep this rank's parameters, optimizer state, param groups and scheduler as they are
        now (a CPU copy, buffers reused from the last snapshot), for ``restore``."""
        import copy

        from rayrlhf.engine.state import _local

        old = self._snap or {"params": {}, "opt": {}}

        def keep(store: dict, key, t: torch.Tensor) -> torch.Tensor:
            buf = store.get(key)
            if buf is None or buf.shape != t.shape or buf.dtype != t.dtype:
                buf = torch.empty(t.shape, dtype=t.dtype, device="cpu")
            buf.copy_(t.detach())
            return buf

        with torch.no_grad():
            # Only what an optimizer step changes: a frozen base (LoRA) is never copied.
            params = {id(p): keep(old["params"], id(p), _local(p)) for p in self.model.parameters() if p.requires_grad}
            opt: dict = {}
            for p, k, t in self._opt_tensors():
                opt[(id(p), k)] = keep(old["opt"], (id(p), k), t)
        self._snap = {
            "params": params, "opt": opt,
            "has_state": {id(p) for p, st in self.optimizer.state.items() if st},
            "other": {(id(p), k): copy.deepcopy(v) for p, st in self.optimizer.state.items()
                      for k, v in st.items() if not torch.is_tensor(v)},
            "groups": [copy.deepcopy({k: v for k, v in g.items() if k != "params"})
                       for g in self.optimizer.param_groups],
            "scheduler": copy.deepcopy(self.scheduler.state_dict()) if self.scheduler is not None else None,
        }

    def restore(self) -> None:
        """Put back, bitwise, what the last ``snapshot`` kept; no collectives (each rank its own)."""
        import copy

        from rayrlhf.engine.state import _local

        snap = self._snap
        if snap is None:
            raise RuntimeError(f"{self.s.role} rank {self.rank}: restore() without a snapshot()")
        with torch.no_grad():
            for p in self.model.parameters():
                if p.requires_grad:
                    _local(p).copy_(snap["params"][id(p)])
            for p in list(self.optimizer.state):
                if id(p) not in snap["has_state"]:
                    del self.optimizer.state[p]  # state created after the snapshot (a first step)
            for p, k, t in list(self._opt_tensors()):
                t.copy_(snap["opt"][(id(p), k)])
            by_id = {id(p): p for p in self.optimizer.state}
            for (pid, k), v in snap["other"].items():
                self.optimizer.state[by_id[pid]][k] = copy.deepcopy(v)
        for g, kept in zip(self.optimizer.param_groups, snap["groups"]):
            g.update(copy.deepcopy(kept))
        if self.scheduler is not None:
            self.scheduler.load_state_dict(copy.deepcopy(snap["scheduler"]))
        self.optimizer.zero_grad(set_to_none=True)

    def _no_sync(self, skip_sync: bool):
        import contextlib

        if skip_sync and hasattr(self.model, "no_sync"):
            return self.model.no_sync()  # DDP: all-reduce once, on the last micro-batch
        return contextlib.nullcontext()

    def clip_grad_norm(self) -> float:
        norm = torch.nn.utils.clip_grad_norm_(self.model.parameters(), self.s.max_grad_norm or float("inf"))
        if hasattr(norm, "full_tensor"):
            norm = norm.full_tensor()
        return float(norm)

    # -- state ---------------------------------------------------------------------------------------
    def save(self, folder: str, prefix: str) -> None:
        from rayrlhf.engine import state

        state.save(self, folder, prefix)

    def load(self, folder: str, prefix: str, optimizer: bool = True) -> float | None:
        """Restore a checkpoint. The learning rate is the configured one (``settings.lr``), not
        the one in the checkpoint's optimizer state: a run resumed after an edit of its learning
        rate trains at the new rate from here on (a schedule keeps its position, scaled to the
        new peak). Returns the checkpoint's peak learning rate when it differed, else None."""
        from rayrlhf.engine import state

        state.load(self, folder, prefix, optimizer)
        if not optimizer or self.optimizer is None or not self.trainable:
            return None
        groups = self.optimizer.param_groups
        key = "initial_lr" if self.scheduler is not None else "lr"
        old = float(groups[0].get(key, groups[0]["lr"]))
        if not old or math.isclose(old, self.s.lr, rel_tol=1e-9):
            return None
        ratio = self.s.lr / old
        for g in groups:
            g["lr"] *= ratio
            if "initial_lr" in g:
                g["initial_lr"] *= ratio
        if self.scheduler is not None:
            self.scheduler.base_lrs = [b * ratio for b in self.scheduler.base_lrs]
            self.scheduler._last_lr = [g["lr"] for g in groups]
        return old

    def iter_full_weights(self, bucket_bytes: int, device: torch.device | str = "cpu"):
        """Buckets of full weights in the export dtype (every rank in step under FSDP)."""
        from rayrlhf.engine import state

        dtype = DTYPES[self.s.dtype]
        for bucket in state.iter_full(self.hf_model, bucket_bytes, device):
            yield {k: v.to(dtype) if v.is_floating_point() else v for k, v in bucket.items()}

    def full_state_dict(self) -> dict:
        """The HF model's whole state dict in the export dtype on rank 0's CPU ({} elsewhere)."""
        from rayrlhf.engine import state

        return state.full_state_dict(self, DTYPES[self.s.dtype])

    def export(self, tokenizer, out_dir: str, extra: dict | None = None) -> str | None:
        """A plain Hugging Face folder of the full weights in the configured dtype (rank 0
        writes it; every rank gathers)."""
        from rayrlhf.models import export_hf

        weights = self.full_state_dict()
        adapter = self.adapter() if self.trainable and self.s.lora.enabled else None
        if self.rank != 0:
            return None
        return export_hf(self.hf_model, tokenizer, out_dir, extra=extra, state_dict=weights,
                         dtype=self.s.dtype, adapter=adapter)

    def adapter(self) -> tuple[dict, dict]:
        """(tensors, adapter_config) of the LoRA adapters in peft's format, float32, gathered
        on every rank (a collective under FSDP)."""
        from rayrlhf.engine import lora, state

        named = {k: state.full_tensor(v, "cpu", torch.float32) for k, v in state.named_state(self.hf_model).items()
                 if ".lora_" in k}
        base = getattr(self.hf_model.config, "_name_or_path", "") or ""
        return lora.adapter_state(named), lora.adapter_config(self.hf_model, base)
