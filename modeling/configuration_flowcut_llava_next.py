"""Configuration of a LLaVA-NeXT model that prunes its visual tokens with FlowCut, in the vision encoder and in the LLM.

``model_type`` stays ``"llava_next"``: without ``trust_remote_code`` the repo loads as the stock, unpruned
LLaVA-NeXT, which works with the stock processor that every FlowCut LLaVA-NeXT repo ships unchanged.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaNextConfig

from .flowcut_settings import (
    DEFAULT_HISTORY_WEIGHT,
    DEFAULT_LLM_PRUNE_LAYER,
    DEFAULT_PRUNE_INTERVAL,
    FIELD_VALIDATORS,
    ValidatedFlowCutFields,
    validate_target_num,
)

DEFAULT_NEXT_TARGET_NUM = 160  # the paper's headline LLaVA-NeXT setting


def validate_next_target_num(target_num: object) -> int:
    # The vision stage keeps target_num // 2 patches per crop: below 2 a crop would keep nothing.
    return validate_target_num(
        target_num, minimum=2, why=" (LLaVA-NeXT keeps target_num // 2 patches of every crop in the vision encoder)"
    )


NEXT_FIELD_VALIDATORS = {**FIELD_VALIDATORS, "flowcut_target_num": validate_next_target_num}


@strict
class FlowCutLlavaNextConfig(ValidatedFlowCutFields, LlavaNextConfig):
    r"""A [`LlavaNextConfig`] with the FlowCut settings.

    Args:
        flowcut_target_num (`int`, defaults to 160):
            Visual tokens kept per image in the LLM after its `flowcut_llm_prune_layer`. The vision encoder keeps
            `flowcut_target_num // 2` patches of every anyres crop. An image whose stock token count is at most this
            value is kept whole, exactly as the stock model sees it.
        flowcut_enabled (`bool`, defaults to `True`):
            Switch pruning off entirely; the model then computes exactly what stock LLaVA-NeXT computes.
        flowcut_prune_interval (`int`, defaults to 2):
            Prune at every n-th vision-encoder layer, counted back from the final cut (the paper's best is 2).
        flowcut_history_weight (`float`, defaults to 0.5):
            Weight of the running score in the cumulative score update (the paper uses 0.5/0.5).
        flowcut_llm_prune_layer (`int`, defaults to 1):
            The decoder layer whose attention scores the visual tokens; layers up to it see every visual token,
            later layers only the kept ones (the paper prunes after the second layer, index 1).
    """

    flowcut_field_validators = NEXT_FIELD_VALIDATORS

    # Typed Any: see ValidatedFlowCutFields, which checks every assignment.
    flowcut_target_num: Any = DEFAULT_NEXT_TARGET_NUM
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = DEFAULT_PRUNE_INTERVAL
    flowcut_history_weight: Any = DEFAULT_HISTORY_WEIGHT
    flowcut_llm_prune_layer: Any = DEFAULT_LLM_PRUNE_LAYER


__all__ = ["FlowCutLlavaNextConfig", "DEFAULT_NEXT_TARGET_NUM", "NEXT_FIELD_VALIDATORS", "validate_next_target_num"]
