"""flowcut-hf's vLLM plug-in: vLLM loads it in every process it starts (entry point group ``vllm.general_plugins``),
so ``vllm serve <variant>`` and ``LLM(model=<variant>)`` prune with nothing else asked of the user, tensor-parallel
workers included.

It registers, for each family of :data:`flowcut_hf.registry.REGISTRY`, the class its ``vllm_model`` names under the
stock architecture name (what a variant's ``config.json`` lists): a class that serves the family's stock checkpoints
exactly as vLLM's own, and its FlowCut variants pruned (``vllm_methods``) or refused at load with an error that says
what works; and the oracle ``flowcut-hf bench --engine vllm`` measures against, under an architecture name of its
own. Classes are named by import path, so nothing of vLLM or torch is imported until vLLM builds the model.
Leave the plug-in out with vLLM's ``VLLM_PLUGINS`` (a list of the plug-ins to load that omits ``flowcut``).
"""

from __future__ import annotations

from .registry import REGISTRY


def register() -> None:
    """Registers the plug-in's model classes with vLLM (safe to call more than once, as vLLM may)."""
    from vllm import ModelRegistry

    for entry in REGISTRY:
        if entry.vllm_model:
            ModelRegistry.register_model(entry.model_class, entry.vllm_model)
        if entry.vllm_oracle_model:
            ModelRegistry.register_model(entry.vllm_oracle_model.rpartition(":")[2], entry.vllm_oracle_model)


__all__ = ["register"]
