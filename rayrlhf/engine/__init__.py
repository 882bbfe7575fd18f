"""The training engine every trained role goes through: the device of the actor's bundle, the
wrapping strategy (DDP or FSDP2), mixed precision with float32 master weights, gradient
checkpointing, micro-batches with gradient accumulation, checkpoints (sharded with
torch.distributed.checkpoint under FSDP), full-weight export and bucketed weight streaming;
and the memory plan checked before launch."""
from rayrlhf.engine.engine import Engine
from rayrlhf.engine.settings import CriticLoss, EngineSettings, PolicyLoss

__all__ = ["Engine", "EngineSettings", "PolicyLoss", "CriticLoss"]
