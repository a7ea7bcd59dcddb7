"""Configurations of Qwen2-VL and Qwen2.5-VL models that prune their visual tokens with FlowCut.

``model_type`` stays ``"qwen2_vl"`` / ``"qwen2_5_vl"``: without ``trust_remote_code`` a repo loads as the stock,
unpruned model, which works with the stock processor that every FlowCut Qwen repo ships unchanged.

Qwen's dynamic resolution gives every image its own token count, so the retained amount is set per image, either as
a ratio of the image's merge units (``flowcut_retain_ratio``, as in the paper's tables) or as a count
(``flowcut_target_num``, which wins when both are set).
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

from .flowcut_settings import (
    DEFAULT_HISTORY_WEIGHT,
    DEFAULT_LLM_PRUNE_LAYER,
    DEFAULT_PRUNE_INTERVAL,
    FIELD_VALIDATORS,
    ValidatedFlowCutFields,
    validate_llm_stage,
    validate_target_num,
)

DEFAULT_QWEN_RETAIN_RATIO = 0.111  # the paper's most aggressive Qwen2-VL setting (88.9% of the tokens removed)


def validate_optional_target_num(target_num: object) -> int | None:
    return None if target_num is None else validate_target_num(target_num)


def validate_retain_ratio(ratio: object) -> float | None:
    if ratio is None:
        return None
    if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0.0 < ratio <= 1.0:
        raise ValueError(
            f"flowcut_retain_ratio must be a number in (0, 1], the share of each image's tokens kept (the paper uses "
            f"0.333, 0.222 and 0.111), got {ratio!r}. To switch pruning off, set flowcut_enabled=False instead."
        )
    return float(ratio)


QWEN_FIELD_VALIDATORS = {
    **FIELD_VALIDATORS,
    "flowcut_target_num": validate_optional_target_num,
    "flowcut_retain_ratio": validate_retain_ratio,
    "flowcut_llm_stage": validate_llm_stage,
}

QWEN_FIELDS_DOC = r"""
        flowcut_retain_ratio (`float`, defaults to 0.111):
            Share of each image's (or video's) merge units kept in the LLM after `flowcut_llm_prune_layer`, rounded,
            at least one. The vision encoder keeps twice as many. 1.0 keeps every token: the model then computes
            exactly what the stock model computes.
        flowcut_target_num (`int`, *optional*):
            A count per image instead of a ratio; when set it wins over `flowcut_retain_ratio`. An image with at most
            this many tokens is kept whole.
        flowcut_enabled (`bool`, defaults to `True`):
            Switch pruning off entirely; the model then computes exactly what the stock model computes.
        flowcut_prune_interval (`int`, defaults to 2):
            Prune at every n-th vision block, counted back from the final cut at the last block.
        flowcut_history_weight (`float`, defaults to 0.5):
            Weight of the running score in the cumulative score update (the paper uses 0.5/0.5).
        flowcut_llm_prune_layer (`int`, defaults to 1):
            The decoder layer whose attention scores the visual tokens (the paper prunes after the second layer).
        flowcut_llm_stage (`bool`, defaults to `True`):
            False: the vision encoder keeps the retained amount itself (not twice it) and the language model runs on
            all it keeps, with no pruning inside it. This is the schedule vLLM serves (vLLM keeps one KV length per
            request in every layer), so a transformers run with it set compares with a vLLM run of the same variant.
"""


@strict
class FlowCutQwen2VLConfig(ValidatedFlowCutFields, Qwen2VLConfig):
    flowcut_field_validators = QWEN_FIELD_VALIDATORS

    # Typed Any: see ValidatedFlowCutFields, which checks every assignment.
    flowcut_retain_ratio: Any = DEFAULT_QWEN_RETAIN_RATIO
    flowcut_target_num: Any = None
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = DEFAULT_PRUNE_INTERVAL
    flowcut_history_weight: Any = DEFAULT_HISTORY_WEIGHT
    flowcut_llm_prune_layer: Any = DEFAULT_LLM_PRUNE_LAYER
    flowcut_llm_stage: Any = True


@strict
class FlowCutQwen2_5_VLConfig(ValidatedFlowCutFields, Qwen2_5_VLConfig):
    flowcut_field_validators = QWEN_FIELD_VALIDATORS

    flowcut_retain_ratio: Any = DEFAULT_QWEN_RETAIN_RATIO
    flowcut_target_num: Any = None
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = DEFAULT_PRUNE_INTERVAL
    flowcut_history_weight: Any = DEFAULT_HISTORY_WEIGHT
    flowcut_llm_prune_layer: Any = DEFAULT_LLM_PRUNE_LAYER
    flowcut_llm_stage: Any = True


FlowCutQwen2VLConfig.__doc__ = "A [`Qwen2VLConfig`] with the FlowCut settings.\n\n    Args:" + QWEN_FIELDS_DOC
FlowCutQwen2_5_VLConfig.__doc__ = "A [`Qwen2_5_VLConfig`] with the FlowCut settings.\n\n    Args:" + QWEN_FIELDS_DOC

__all__ = [
    "DEFAULT_QWEN_RETAIN_RATIO",
    "FlowCutQwen2VLConfig",
    "FlowCutQwen2_5_VLConfig",
    "QWEN_FIELD_VALIDATORS",
    "validate_retain_ratio",
]
