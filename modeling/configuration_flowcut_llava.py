"""Configuration of a LLaVA model that prunes its visual tokens with FlowCut.

``model_type`` stays ``"llava"`` on purpose: a user who loads the repo without ``trust_remote_code`` gets the stock,
unpruned LLaVA, whose model and processor still agree with each other.
"""

from __future__ import annotations

from typing import Any

from huggingface_hub.dataclasses import strict
from transformers import LlavaConfig

DEFAULT_TARGET_NUM = 64


def validate_target_num(target_num: object) -> int:
    """Returns ``target_num`` if it is a usable retained-token count, else raises a ValueError naming the fix."""
    if isinstance(target_num, bool) or not isinstance(target_num, int):
        raise ValueError(
            f"flowcut_target_num must be a positive int (the visual tokens kept per image, e.g. 64), "
            f"got {target_num!r} of type {type(target_num).__name__}."
        )
    if target_num < 1:
        raise ValueError(
            f"flowcut_target_num must be >= 1 (the visual tokens kept per image, e.g. 64), got {target_num}. "
            "To switch pruning off, set flowcut_enabled=False instead."
        )
    return target_num


def validate_enabled(enabled: object) -> bool:
    if not isinstance(enabled, bool):
        raise ValueError(f"flowcut_enabled must be True or False, got {enabled!r}.")
    return enabled


def validate_prune_interval(interval: object) -> int:
    if isinstance(interval, bool) or not isinstance(interval, int) or interval < 1:
        raise ValueError(f"flowcut_prune_interval must be an int >= 1 (the paper uses 2), got {interval!r}.")
    return interval


def validate_history_weight(weight: object) -> float:
    if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not 0.0 <= weight < 1.0:
        raise ValueError(f"flowcut_history_weight must be a number in [0, 1) (the paper uses 0.5), got {weight!r}.")
    return float(weight)


FIELD_VALIDATORS = {
    "flowcut_target_num": validate_target_num,
    "flowcut_enabled": validate_enabled,
    "flowcut_prune_interval": validate_prune_interval,
    "flowcut_history_weight": validate_history_weight,
}


@strict
class FlowCutLlavaConfig(LlavaConfig):
    r"""A [`LlavaConfig`] with the FlowCut settings.

    Args:
        flowcut_target_num (`int`, defaults to 64):
            Visual tokens kept per image and fed to the language model. A value at or above the encoder's patch
            count (576 for LLaVA-1.5) keeps every token and runs the stock computation.
        flowcut_enabled (`bool`, defaults to `True`):
            Switch pruning off entirely; the model then computes exactly what stock LLaVA computes.
        flowcut_prune_interval (`int`, defaults to 2):
            Prune at every n-th vision-encoder layer, counted back from the final cut (the paper's best is 2).
        flowcut_history_weight (`float`, defaults to 0.5):
            Weight of the running score in the cumulative score update (the paper uses 0.5/0.5).
    """

    # Typed Any on purpose: the strict dataclass would otherwise reject bad values with its own (non-ValueError)
    # error before __setattr__ can explain the fix. __setattr__ checks every assignment, including
    # from_pretrained(..., flowcut_target_num=N) overrides and changes on a loaded model.
    flowcut_target_num: Any = DEFAULT_TARGET_NUM
    flowcut_enabled: Any = True
    flowcut_prune_interval: Any = 2
    flowcut_history_weight: Any = 0.5

    def __setattr__(self, name: str, value: Any) -> None:
        validator = FIELD_VALIDATORS.get(name)
        if validator is not None:
            validator(value)
        super().__setattr__(name, value)


__all__ = ["FlowCutLlavaConfig", "validate_target_num", "validate_enabled", "DEFAULT_TARGET_NUM", "FIELD_VALIDATORS"]
