"""FlowCut's settings: the config fields every family shares, their validation, and one frozen view of them.

A config class of any family declares the fields (typed ``Any``, see below) and inherits
:class:`ValidatedFlowCutFields`, so every assignment is checked: in ``__init__``, in
``from_pretrained(..., flowcut_target_num=N)`` overrides, and on a loaded model.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from .flowcut_compat import MINIMUM_TRANSFORMERS, check_transformers_version

DEFAULT_TARGET_NUM = 64
DEFAULT_PRUNE_INTERVAL = 2
DEFAULT_HISTORY_WEIGHT = 0.5
DEFAULT_LLM_PRUNE_LAYER = 1


def validate_target_num(target_num: object, minimum: int = 1, why: str = "") -> int:
    """Returns ``target_num`` if it is a usable retained-token count, else raises a ValueError naming the fix."""
    if isinstance(target_num, bool) or not isinstance(target_num, int):
        raise ValueError(
            f"flowcut_target_num must be a positive int (the visual tokens kept per image, e.g. 64), "
            f"got {target_num!r} of type {type(target_num).__name__}."
        )
    if target_num < minimum:
        raise ValueError(
            f"flowcut_target_num must be >= {minimum} (the visual tokens kept per image, e.g. 64), got {target_num}"
            f"{why}. To switch pruning off, set flowcut_enabled=False instead."
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


def validate_llm_stage(llm_stage: object) -> bool:
    if not isinstance(llm_stage, bool):
        raise ValueError(
            f"flowcut_llm_stage must be True (prune in the vision encoder and again inside the language model, as in the "
            f"paper) or False (the vision encoder cuts straight to the kept amount: the schedule vLLM serves), got "
            f"{llm_stage!r}."
        )
    return llm_stage


def validate_llm_prune_layer(layer: object) -> int:
    if isinstance(layer, bool) or not isinstance(layer, int) or layer < 0:
        raise ValueError(
            f"flowcut_llm_prune_layer must be an int >= 0 (the decoder layer whose attention scores the visual tokens; "
            f"the paper uses 1, the second layer), got {layer!r}."
        )
    return layer


FIELD_VALIDATORS: dict[str, Callable[[object], object]] = {
    "flowcut_target_num": validate_target_num,
    "flowcut_enabled": validate_enabled,
    "flowcut_prune_interval": validate_prune_interval,
    "flowcut_history_weight": validate_history_weight,
    "flowcut_llm_prune_layer": validate_llm_prune_layer,
}


class ValidatedFlowCutFields:
    """Mixin for FlowCut config classes: checks every ``flowcut_*`` assignment with :data:`FIELD_VALIDATORS`.

    The fields themselves are typed ``Any`` in the config classes: the strict dataclass would otherwise reject bad
    values with its own (non-ValueError) error before this check could explain the fix.
    """

    flowcut_field_validators = FIELD_VALIDATORS  # a plain class attribute: no annotation, so never a config field

    def __setattr__(self, name: str, value: Any) -> None:
        validator = self.flowcut_field_validators.get(name)
        if validator is not None:
            validator(value)
        super().__setattr__(name, value)


@dataclass(frozen=True)
class FlowCutSettings:
    """The FlowCut settings a forward pass runs with, read once from the config."""

    enabled: bool
    target_num: int | None
    prune_interval: int = DEFAULT_PRUNE_INTERVAL
    history_weight: float = DEFAULT_HISTORY_WEIGHT
    llm_prune_layer: int = DEFAULT_LLM_PRUNE_LAYER
    retain_ratio: float | None = None
    """Families with per-image token counts (Qwen2-VL): the share kept when ``target_num`` is None."""
    llm_stage: bool = True
    """Families that prune inside the language model: False cuts to the kept amount in the vision encoder instead."""

    @classmethod
    def from_config(cls, config, default_target_num: int = DEFAULT_TARGET_NUM) -> "FlowCutSettings":
        # Read fields, not types: a config loaded as remote code may come from another module copy of the class.
        return cls(
            enabled=bool(getattr(config, "flowcut_enabled", True)),
            target_num=getattr(config, "flowcut_target_num", default_target_num),
            prune_interval=getattr(config, "flowcut_prune_interval", DEFAULT_PRUNE_INTERVAL),
            history_weight=getattr(config, "flowcut_history_weight", DEFAULT_HISTORY_WEIGHT),
            llm_prune_layer=getattr(config, "flowcut_llm_prune_layer", DEFAULT_LLM_PRUNE_LAYER),
            retain_ratio=getattr(config, "flowcut_retain_ratio", None),
            llm_stage=getattr(config, "flowcut_llm_stage", True),
        )

    def retained(self, available: int) -> int:
        """How many of ``available`` tokens an image keeps: ``target_num``, else ``retain_ratio`` of them (rounded
        half up, at least one); never more than ``available``."""
        if self.target_num is not None:
            return min(self.target_num, available)
        if self.retain_ratio is None:
            raise ValueError("set flowcut_target_num or flowcut_retain_ratio: neither says how many tokens to keep")
        return min(available, max(1, math.floor(self.retain_ratio * available + 0.5)))


def configure_flowcut_fields(config, validators: dict[str, Callable[[object], object]], **changes: object) -> None:
    """Sets ``flowcut_<name>`` fields on ``config``; all values are validated before any is changed.

    ``changes`` maps short names (``target_num``, ``enabled``, ...) to new values; ``None`` leaves a field as it is.
    """
    updates = {f"flowcut_{name}": value for name, value in changes.items() if value is not None}
    for field_name, value in updates.items():
        validator = validators.get(field_name)
        if validator is None:
            raise ValueError(f"{field_name} is not a FlowCut setting of this model; known: {sorted(validators)}.")
        validator(value)
    for field_name, value in updates.items():
        setattr(config, field_name, value)


__all__ = [
    "DEFAULT_TARGET_NUM",
    "MINIMUM_TRANSFORMERS",
    "check_transformers_version",
    "FIELD_VALIDATORS",
    "FlowCutSettings",
    "ValidatedFlowCutFields",
    "configure_flowcut_fields",
    "validate_enabled",
    "validate_history_weight",
    "validate_llm_prune_layer",
    "validate_llm_stage",
    "validate_prune_interval",
    "validate_target_num",
]
