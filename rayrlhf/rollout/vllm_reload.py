"""vLLM's in-place weight reload, and the one warning of it that is not about the weights.

``reload_weights`` counts every parameter *and buffer* of a layer as something the checkpoint
should fill, and warns ``<Layer>: Failed to load weights`` for a layer that got none, then puts
the layer's old tensors back. A rotary embedding holds only ``cos_sin_cache``, a non-persistent
buffer vLLM computes from the config when it builds the model; no checkpoint has it (the
trainer sends parameters and persistent buffers, ``rayrlhf.engine.state.named_state``, and
vLLM's Llama loader drops ``rotary_emb.inv_freq`` even when sent), so it warns at every sync
while the cache it keeps is the right one. The filter here drops that warning for layer classes
whose tensors are all non-persistent buffers, and only for them: a layer with parameters that
got no weights (a name the engine does not know) still warns.
"""
from __future__ import annotations

import logging

import torch

RELOAD_LOGGER = "vllm.model_executor.model_loader.reload.layerwise"
FAILED = "%s: Failed to load weights"


def buffer_only_classes(model: torch.nn.Module) -> set[str]:
    """Class names of the modules that have tensors of their own and all of them are
    non-persistent buffers (never in a checkpoint), over every instance of the class."""
    verdict: dict[str, bool] = {}
    for module in model.modules():
        params = [p for p in module._parameters.values() if p is not None]
        buffers = [n for n, b in module._buffers.items() if b is not None]
        if not params and not buffers:
            continue
        only_derived = not params and all(n in module._non_persistent_buffers_set for n in buffers)
        name = type(module).__name__
        verdict[name] = verdict.get(name, True) and only_derived
    return {name for name, ok in verdict.items() if ok}


class BufferOnlyReloadFilter(logging.Filter):
    """Drops ``FAILED`` records whose layer class is in ``classes``."""

    def __init__(self) -> None:
        super().__init__()
        self.classes: set[str] = set()

    def filter(self, record: logging.LogRecord) -> bool:
        return not (record.msg == FAILED and record.args and record.args[0] in self.classes)


def quiet_buffer_only_layers(worker) -> list[str]:
    """Run in each vLLM worker (``llm.collective_rpc``): filter the reload warning of this
    worker's buffer-only layers; returns their class names."""
    get_model = getattr(getattr(worker, "model_runner", None), "get_model", None)
    if get_model is None:  # a worker of another shape: leave the warning as it is
        return []
    logger = logging.getLogger(RELOAD_LOGGER)
    found = next((f for f in logger.filters if isinstance(f, BufferOnlyReloadFilter)), None)
    if found is None:
        found = BufferOnlyReloadFilter()
        logger.addFilter(found)
    found.classes |= buffer_only_classes(get_model())
    return sorted(found.classes)
