"""What the vLLM plug-in shares across families: which pruning a served checkpoint asks for, the refusal of a variant
vLLM cannot run pruned, and the vLLM model class that checks for one.

vLLM runs its own implementation of each model family, so the remote code of a FlowCut variant never runs there.
Without the plug-in, vLLM serves a variant as its stock model, unpruned, and says nothing. With it, every family of
the registry is either served pruned (its ``vllm_model`` says how, for the methods in ``vllm_methods``) or refused at
load with an error that says what works. A stock checkpoint is served exactly as without the plug-in.

This module imports vLLM; only the plug-in's model classes import it, in vLLM's own processes.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from typing import Any

from .registry import REGISTRY, FamilyEntry, entry_for_config

PRUNING_FIELD_PREFIXES = ("flowcut_", "vflowopt_")


class NotServableError(RuntimeError):
    """A FlowCut variant that vLLM cannot run with its pruning.

    Not a ValueError on purpose: vLLM takes a ValueError from a model's request processor to mean "no multimodal
    processor" and serves the model text-only, which would hide the refusal."""


def config_fields(config: Any) -> Mapping[str, Any]:
    """The top-level fields of a config object or ``config.json`` dict (not those of its sub-configs)."""
    return config if isinstance(config, Mapping) else config.to_dict()


def requested_pruning(config: Any) -> str | None:
    """The pruning method a checkpoint's config asks for (``"flowcut"``, ``"vflowopt"``), or None for a stock checkpoint
    and for a variant whose pruning is switched off (``flowcut_enabled=False``): both run as the stock model."""
    fields = config_fields(config)
    if not any(name.startswith(PRUNING_FIELD_PREFIXES) or name == "pruning_method" for name in fields):
        return None
    method = fields.get("pruning_method") or entry_for_config(fields).methods[0]
    if fields.get(f"{method}_enabled", True) is False:
        return None
    return method


def served_pruned() -> str:
    """The families and methods vLLM serves pruned, in words."""
    served = [
        f"{entry.display_name} ({', '.join(entry.vllm_methods)}{', vision stage only' if entry.vllm_requires else ''})"
        for entry in REGISTRY
        if entry.vllm_methods
    ]
    return ", ".join(served) if served else "none"


def refuse_unservable(config: Any) -> str | None:
    """The method a checkpoint asks for if vLLM serves it pruned, None for a stock checkpoint; raises
    :class:`NotServableError` for a variant it cannot serve pruned (never serve one silently unpruned)."""
    method = requested_pruning(config)
    if method is None:
        return None
    fields = config_fields(config)
    entry: FamilyEntry = entry_for_config(fields)
    if method in entry.vllm_methods:
        unmet = {name: value for name, value in entry.vllm_requires if fields.get(name, not value) != value}
        if not unmet:
            return method
        overrides = json.dumps(unmet)
        raise NotServableError(
            f"flowcut-hf: this checkpoint is a {entry.display_name} variant pruned with {method} in the vision encoder "
            "and again inside the language model, which vLLM cannot run: it keeps one KV-cache length per request in "
            "every layer and prefills in chunks. vLLM serves its vision stage alone, cut straight to the kept amount: "
            f"add --hf-overrides '{overrides}' to vllm serve (LLM(..., hf_overrides={unmet!r}) offline). transformers "
            f"runs the same schedule with from_pretrained(..., trust_remote_code=True, "
            f"{', '.join(f'{k}={v!r}' for k, v in unmet.items())}), and the paper's with the checkpoint as it is."
        )
    raise NotServableError(
        f"flowcut-hf: this checkpoint is a {entry.display_name} variant pruned with {method}, which vLLM cannot run: "
        f"{method} on {entry.display_name} also prunes inside the language model, and vLLM keeps one KV-cache length "
        "per request in every layer and prefills in chunks. Serve it with transformers "
        "(AutoModelForImageTextToText.from_pretrained(..., trust_remote_code=True)), or serve its unpruned base model "
        f"with vLLM. vLLM serves these pruned: {served_pruned()}."
    )


def checked_stock_model(stock_class: type) -> type:
    """A subclass of vLLM's own class for a family that serves stock checkpoints exactly as that class does and refuses
    a FlowCut variant, both when vLLM builds the request processor (the front-end process, before any weights load)
    and when it builds the model (every worker)."""
    from vllm.multimodal import MULTIMODAL_REGISTRY

    factories = stock_class._processor_factory

    def processing_info(ctx):
        refuse_unservable(ctx.model_config.hf_config)
        return factories.info(ctx)

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        refuse_unservable(vllm_config.model_config.hf_config)
        stock_class.__init__(self, vllm_config=vllm_config, prefix=prefix)

    checked = type(f"FlowCutChecked{stock_class.__name__}", (stock_class,), {"__init__": __init__})
    register = MULTIMODAL_REGISTRY.register_processor(
        factories.processor, info=processing_info, dummy_inputs=factories.dummy_inputs
    )
    return register(checked)


__all__ = [
    "NotServableError", "checked_stock_model", "config_fields", "refuse_unservable", "requested_pruning",
    "served_pruned",
]
