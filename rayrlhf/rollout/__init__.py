"""Rollout workers: sampling with vLLM or transformers behind one interface, weight reloads
with a checksum, and a logprob probe that shows a reload really took."""
from rayrlhf.rollout.checksum import probe_matches, weights_checksum
from rayrlhf.rollout.config import RolloutSection
from rayrlhf.rollout.types import RolloutBackend, Sample
from rayrlhf.rollout.worker import RolloutWorker, make_backend

__all__ = [
    "probe_matches", "weights_checksum", "RolloutSection", "RolloutBackend", "Sample",
    "RolloutWorker", "make_backend",
]
