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
    # error before __setattr__ can explain the fix. __setattr__ enforces "positive int" on every assignment,
    # including from_pretrained(..., flowcut_target_num=N) overrides.
    flowcut_target_num: Any = DEFAULT_TARGET_NUM
    flowcut_enabled: bool = True
    flowcut_prune_interval: int = 2
    flowcut_history_weight: float = 0.5

    def __setattr__(self, name: str, value: Any) -> None:
        if name == "flowcut_target_num":
            validate_target_num(value)
        super().__setattr__(name, value)

    def __post_init__(self, **kwargs):
        super().__post_init__(**kwargs)
        if isinstance(self.flowcut_prune_interval, bool) or self.flowcut_prune_interval < 1:
            raise ValueError(f"flowcut_prune_interval must be an int >= 1, got {self.flowcut_prune_interval!r}.")
        if not 0.0 <= self.flowcut_history_weight < 1.0:
            raise ValueError(f"flowcut_history_weight must lie in [0, 1), got {self.flowcut_history_weight!r}.")


__all__ = ["FlowCutLlavaConfig", "validate_target_num", "DEFAULT_TARGET_NUM"]
