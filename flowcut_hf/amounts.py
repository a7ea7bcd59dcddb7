"""How many visual tokens a variant keeps, and the checks every command applies to it.

``--target-num`` (a count per image), ``--retain-ratio`` (a share of each image's tokens, for families whose token
count follows the image size) and ``--preset`` (VFlowOpt's stages) are checked here, for a family, in the command
line's words: the exporter, visualize and the plug-ins refuse the same input the same way. Which amounts a family takes
is its :attr:`~flowcut_hf.family.FlowCutFamily.amount_kinds` and ``methods``; nothing here names a family.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from types import SimpleNamespace
from typing import TYPE_CHECKING, Any

from .registry import display_names

if TYPE_CHECKING:
    from .family import FlowCutFamily


@dataclass(frozen=True)
class VFlowOptPreset:
    """VFlowOpt settings for a variant: a released preset or a search result (``flowcut-hf search``)."""

    label: str
    """The ``{n}`` of variant names (``10`` for the released 10% preset, the file's stem for a search result)."""
    settings: dict[str, Any]
    """The ``vflowopt_*`` config fields."""
    search: dict[str, Any] | None = None
    """How a searched preset was found (budget, trials, data, objective), recorded in the card."""
    budget: float | None = None
    """The share of visual tokens kept, averaged over the decoder layers."""
    source: str = ""
    """What the user named: ``10%`` or the preset file."""
    note: str | None = None
    """For a released preset, where its settings come from (the card says it)."""


def load_vflowopt_preset(spec: str, num_layers: int) -> VFlowOptPreset:
    """``spec`` is a released preset name (``10%``, ``25%``, ``50%``; moved to a language model of ``num_layers``
    decoder layers if it is not the depth they were searched on) or a preset JSON written by ``flowcut-hf search``."""
    from .modeling.vflowopt_core import PRESET_DEPTH, PRESET_MODEL, VFLOWOPT_PRESETS, preset_for_depth, vflowopt_fields

    released = VFLOWOPT_PRESETS[PRESET_MODEL]
    if spec in released:
        budget = float(spec.rstrip("%")) / 100
        found = f"its settings are the authors' released {spec} preset, found by their optimizer on {PRESET_MODEL}"
        if num_layers == PRESET_DEPTH:
            source, note = spec, found + "."
        else:
            source = f"{spec} (moved to {num_layers} layers)"
            note = (
                f"{found} ({PRESET_DEPTH} decoder layers) and moved to this model's {num_layers} with the same budget "
                "(the stage layers scaled, the last stage's share solved); `flowcut-hf search` finds this model's own."
            )
        return VFlowOptPreset(
            spec.rstrip("%"), vflowopt_fields(preset_for_depth(spec, num_layers)), None, budget, source, note
        )
    path = Path(spec)
    if not path.is_file():
        raise FileNotFoundError(
            f"--preset {spec!r} is neither a released preset ({', '.join(released)}) nor a preset JSON file"
        )
    data = json.loads(path.read_text())
    if data.get("method") != "vflowopt" or not isinstance(data.get("settings"), dict):
        raise ValueError(f"{path} is not a VFlowOpt preset (write one with `flowcut-hf search`)")
    search = data.get("search")
    return VFlowOptPreset(path.stem, dict(data["settings"]), search, (search or {}).get("budget"), path.name)


@dataclass(frozen=True)
class RetainedAmount:
    """How many visual tokens a variant keeps per image: a count, a share of each image's tokens, or (VFlowOpt) the
    stages of a preset."""

    target_num: int | None = None
    retain_ratio: float | None = None
    preset: VFlowOptPreset | None = None

    @property
    def method(self) -> str:
        return "vflowopt" if self.preset is not None else "flowcut"

    @property
    def label(self) -> str:
        """The ``{n}`` of variant names: ``64``, ``0.111`` for a ratio, ``10`` for VFlowOpt's 10% preset."""
        if self.preset is not None:
            return self.preset.label
        return str(self.target_num) if self.target_num is not None else f"{self.retain_ratio:g}"

    def describe(self, full: int) -> str:
        if self.preset is not None:
            budget = f", {self.preset.budget:.0%} of the visual tokens averaged over the layers" if self.preset.budget else ""
            return f"VFlowOpt preset {self.preset.source or self.preset.label}{budget}"
        if self.target_num is not None:
            return f"{self.target_num} of {full} visual tokens per image"
        return f"{self.retain_ratio:.1%} of each image's visual tokens"

    def fields(self) -> dict[str, Any]:
        """Short-named FlowCut settings (``target_num``, ``retain_ratio``) this amount sets."""
        if self.target_num is not None:
            return {"target_num": self.target_num}
        return {"target_num": None, "retain_ratio": self.retain_ratio}

    def retained(self, available: int) -> int:
        """What an image of ``available`` tokens keeps (the model's own rule)."""
        from .modeling.flowcut_settings import FlowCutSettings

        return FlowCutSettings(True, self.target_num, retain_ratio=self.retain_ratio).retained(available)


def image_tokens_per_image(family: FlowCutFamily, config: dict[str, Any]) -> int:
    """Visual tokens of an image without pruning (for families whose count follows the image size, the most an image
    can have)."""
    return family.unpruned_image_tokens(family.config_from_dict(config))


@contextlib.contextmanager
def flags_in_message(field_name: str, flag: str):
    """Re-raises a config validator's ValueError in the command line's words: the flag instead of the config field,
    and no advice about config fields the command does not take."""
    try:
        yield
    except ValueError as error:
        message = str(error).replace(field_name, flag).replace(" To switch pruning off, set flowcut_enabled=False instead.", "")
        raise ValueError(message) from None


def ratio_refusal(family: FlowCutFamily) -> ValueError:
    """The error for ``--retain-ratio`` on a family that keeps a count per image."""
    return ValueError(
        f"--retain-ratio applies to {display_names(lambda entry: 'retain_ratio' in entry.amount_kinds)}; "
        f"{family.display_name} keeps a count per image: use --target-num."
    )


def _vflowopt_amounts(specs: Sequence[str], family: FlowCutFamily, config: dict[str, Any]) -> list[RetainedAmount]:
    from .modeling.vflowopt_core import VFLOWOPT_FIELD_VALIDATORS, vflowopt_settings

    amounts = []
    num_layers = family.config_from_dict(config).text_config.num_hidden_layers
    for spec in specs:
        preset = load_vflowopt_preset(spec, num_layers)
        unknown = sorted(set(preset.settings) - set(VFLOWOPT_FIELD_VALIDATORS))
        if unknown:
            raise ValueError(f"preset {spec} has fields that are not VFlowOpt settings: {unknown}")
        for name, value in preset.settings.items():
            VFLOWOPT_FIELD_VALIDATORS[name](value)
        settings = vflowopt_settings(SimpleNamespace(**preset.settings))
        if settings.llm_layers and settings.llm_layers[-1] >= num_layers:
            raise ValueError(f"preset {spec}: vflowopt_llm_layers {list(settings.llm_layers)} reach past the {num_layers} layers")
        amount = RetainedAmount(preset=preset)
        if any(other.label == amount.label for other in amounts):
            raise ValueError(f"--preset {spec} is given twice.")
        amounts.append(amount)
    return amounts


def validate_targets(
    family: FlowCutFamily, config: dict[str, Any], target_nums: Sequence[int] = (), retain_ratios: Sequence[float] = (),
    vflowopt_presets: Sequence[str] = (),
) -> list[RetainedAmount]:
    """The amounts of ``family``'s model with ``config`` (a ``config.json`` dict): every ``--target-num``, then every
    ``--retain-ratio``; or every VFlowOpt ``--preset``."""
    if vflowopt_presets:
        if "vflowopt" not in family.methods:
            supported = display_names(lambda entry: "vflowopt" in entry.methods)
            raise ValueError(f"--method vflowopt applies to {supported}; {family.display_name} runs {list(family.methods)}.")
        if target_nums or retain_ratios:
            raise ValueError("--target-num and --retain-ratio are FlowCut's; a VFlowOpt export takes --preset.")
        return _vflowopt_amounts(vflowopt_presets, family, config)
    if "flowcut" not in family.methods:
        raise ValueError(
            f"{family.display_name} is exported with VFlowOpt: --method vflowopt --preset 10% (or a preset JSON from "
            "`flowcut-hf search`)."
        )
    takes_ratio = "retain_ratio" in family.amount_kinds
    if not target_nums and not retain_ratios:
        raise ValueError(f"Give at least one {'--target-num or --retain-ratio' if takes_ratio else '--target-num'}.")
    if retain_ratios and not takes_ratio:
        raise ratio_refusal(family)
    full = image_tokens_per_image(family, config)
    amounts: list[RetainedAmount] = []
    for target in target_nums:
        if isinstance(target, bool) or not isinstance(target, int) or target < 1:
            raise ValueError(
                f"--target-num must be a whole number of visual tokens kept per image, at least 1 (e.g. 64), got "
                f"{target!r}. To publish the unpruned model, push the base checkpoint itself."
            )
        with flags_in_message("flowcut_target_num", "--target-num"):
            family.field_validators["flowcut_target_num"](target)
        if target >= full:
            raise ValueError(
                f"--target-num {target} prunes nothing: this {family.display_name} model gives at most {full} visual "
                f"tokens per image; choose a value below {full}."
            )
        amounts.append(RetainedAmount(target_num=target))
    for ratio in retain_ratios:
        if isinstance(ratio, bool) or not isinstance(ratio, (int, float)) or not 0 < ratio:
            raise ValueError(f"--retain-ratio must be a share of each image's tokens between 0 and 1 (e.g. 0.111), got {ratio!r}.")
        with flags_in_message("flowcut_retain_ratio", "--retain-ratio"):
            family.field_validators["flowcut_retain_ratio"](ratio)
        if ratio >= 1:
            raise ValueError("--retain-ratio 1.0 prunes nothing; choose a share below 1 (the paper uses 0.111 to 0.333).")
        amounts.append(RetainedAmount(retain_ratio=float(ratio)))
    for index, amount in enumerate(amounts):
        if amount in amounts[:index]:
            flag = "--target-num" if amount.target_num is not None else "--retain-ratio"
            raise ValueError(f"{flag} {amount.label} is given twice.")
    return amounts


__all__ = [
    "RetainedAmount", "VFlowOptPreset", "flags_in_message", "image_tokens_per_image", "load_vflowopt_preset", "ratio_refusal",
    "validate_targets",
]
