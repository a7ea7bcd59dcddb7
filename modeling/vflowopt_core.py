"""VFlowOpt (ICCV 2025) scoring, recycling and stage plans in pure torch, shared by every model family.

VFlowOpt builds one importance map per image at the last vision layer that runs, and uses it three times:

1. **Importance map** (:func:`importance_map`): the head-mean attention each patch receives from the "relatively
   important" tokens, those that receive more than ``threshold`` times the mean attention, plus ``alpha`` times the
   softmax of each patch's pixel entropy (:func:`patch_entropy`). It is computed from the layer's own q and k, so
   the attention backend never has to return weights.
2. **Stage 0** (:func:`recycle_stage0`), after the projector: the lowest-importance tokens are dropped, and the
   dropped tokens of each spatial cell are recycled into one importance-weighted token that sits at the place of the
   cell's best dropped token.
3. **LLM stages** (:func:`llm_stage_keeps`, and :class:`ImportanceDropper` for the layer-group runner of
   :mod:`flowcut_llm_stage`): before each chosen decoder layer, the tokens with the lowest carried importance are
   dropped; the survivors keep their positions.

Its settings are found by an optimizer under a token budget (:func:`average_retention`, :func:`solve_last_ratio`);
:data:`VFLOWOPT_PRESETS` holds the released ones.

This module is written from the method's description (``shared/specs/vflowopt.md``); no code of the authors' release
(CC BY-NC) is used. Departures from it, each a fix: an empty set of important tokens falls back to the most-attended
token (the release yields NaN), ties are broken by position (stable sorts), and the map is per image, never carried
between samples through a side channel.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from contextlib import nullcontext
from dataclasses import dataclass
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from transformers.cache_utils import DynamicCache

from .flowcut_core import record_module_outputs

from .flowcut_llm_stage import (
    IMAGE_INDEX,
    IMPORTANCE,
    ROPE_POSITION,
    LayerGroupsOutput,
    TokenLayout,
    run_layer_groups,
    splice_image_features,
)


@dataclass(frozen=True)
class VFlowOptSettings:
    """One VFlowOpt configuration.

    Attributes:
        vision_keep: share of an image's packed tokens kept by stage 0, recycled tokens included (``illava_vit_r``).
        threshold: a token is "relatively important" if it receives more than ``threshold`` times the mean attention
            (``illava_vit_t``).
        cell_side: side, in tokens, of the spatial cells whose dropped tokens are recycled into one (``illava_vit_m``).
        entropy_weight: weight of the softmax of patch entropy in the map (``illava_vit_alpha_v``).
        llm_layers: decoder layers before which the LLM stages drop tokens (``illava_llm_k``).
        llm_keeps: per LLM stage, the share of the then-current visual tokens kept (``illava_llm_r``).
    """

    vision_keep: float
    threshold: float
    cell_side: float
    entropy_weight: float = 0.0
    llm_layers: tuple[int, ...] = (9, 18)
    llm_keeps: tuple[float, ...] = (1.0, 1.0)

    def __post_init__(self) -> None:
        if not 0.0 < self.vision_keep <= 1.0:
            raise ValueError(f"vflowopt_vision_keep must be in (0, 1], got {self.vision_keep!r}")
        if self.threshold < 0:
            raise ValueError(f"vflowopt_threshold must be >= 0, got {self.threshold!r}")
        if self.cell_side < 1:
            raise ValueError(f"vflowopt_cell_side must be >= 1 token, got {self.cell_side!r}")
        if len(self.llm_layers) != len(self.llm_keeps):
            raise ValueError(
                f"vflowopt_llm_layers {list(self.llm_layers)} and vflowopt_llm_keeps {list(self.llm_keeps)} must have "
                "one entry per LLM stage"
            )
        if list(self.llm_layers) != sorted(set(self.llm_layers)) or (self.llm_layers and self.llm_layers[0] < 1):
            raise ValueError(f"vflowopt_llm_layers must increase and start at 1 or later, got {list(self.llm_layers)}")
        for keep in self.llm_keeps:
            if not 0.0 < keep <= 1.0:
                raise ValueError(f"every vflowopt_llm_keeps entry must be in (0, 1], got {list(self.llm_keeps)}")


PRESET_MODEL = "llava-onevision-qwen2-7b"
PRESET_DEPTH = 28  # decoder layers of the model the presets were searched on

# The released presets, for llava-onevision-qwen2-7b-ov (28 decoder layers; stages before layers 9 and 18).
VFLOWOPT_PRESETS: dict[str, dict[str, VFlowOptSettings]] = {
    "llava-onevision-qwen2-7b": {
        "10%": VFlowOptSettings(0.11661529508161146, 39.26492840997221, 17.386981849158786, 0.0, (9, 18), (1.0, 0.6011)),
        "25%": VFlowOptSettings(
            0.2651026358526424, 34.759552803070484, 15.580797034937687, 0.0, (9, 18),
            (0.9833433139039235, 0.8773258179532721),
        ),
        "50%": VFlowOptSettings(0.7233201448753168, 28.683047941520474, 11.756787150848968, 0.0, (9, 18), (0.748747637472693, 0.487)),
    }
}


# ------------------------------------------------------------------------------------------------ importance map


def importance_map(queries: torch.Tensor, keys: torch.Tensor, scaling: float, threshold: float) -> torch.Tensor:
    """The attention each token receives from the "relatively important" tokens, head-averaged, for one image.

    ``queries`` / ``keys``: ``[tokens, heads, head_dim]`` of the map's layer (its projections of the layer-normed
    input). A token is relatively important if the attention it receives, averaged over all queries, exceeds
    ``threshold`` times the mean; if none does, the most-attended token alone is. Returns float32 ``[tokens]``
    (sums to 1). The N x N attention is built one head at a time.
    """
    queries, keys = queries.float(), keys.float()
    tokens, heads, _ = queries.shape
    attention = torch.zeros(tokens, tokens, dtype=torch.float32, device=queries.device)
    for head in range(heads):
        attention += (queries[:, head] @ keys[:, head].T * scaling).softmax(dim=-1)
    attention /= heads
    received = attention.mean(dim=0)
    important = received > threshold * received.mean()
    if not bool(important.any()):
        important = received == received.max()
    return attention[important].mean(dim=0)


def patch_entropy(pixels: torch.Tensor, patch_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """Shannon entropy (bits) of each patch's 8-bit gray-level histogram, ``[patches]`` in raster order.

    ``pixels`` is one normalised crop ``[channels, height, width]``; it is de-normalised with ``mean`` / ``std`` to
    0-255 first (the release instead wraps the normalised values through uint8, which measures ``(2x + 1) mod 256``).
    """
    mean_t = torch.tensor(mean, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    std_t = torch.tensor(std, dtype=torch.float32, device=pixels.device).view(-1, 1, 1)
    values = ((pixels.float() * std_t + mean_t) * 255).round().clamp(0, 255)
    gray = values.mean(dim=0).round().long()
    rows, columns = gray.shape[0] // patch_size, gray.shape[1] // patch_size
    patches = gray[: rows * patch_size, : columns * patch_size].reshape(rows, patch_size, columns, patch_size)
    patches = patches.permute(0, 2, 1, 3).reshape(rows * columns, -1)
    counts = torch.zeros(rows * columns, 256, device=pixels.device).scatter_add_(
        1, patches, torch.ones_like(patches, dtype=torch.float32)
    )
    probabilities = counts / counts.sum(dim=-1, keepdim=True)
    return -(probabilities * torch.log2(probabilities + 1e-10)).sum(dim=-1)


def combine_importance(attention: torch.Tensor, entropy: torch.Tensor | None, entropy_weight: float) -> torch.Tensor:
    """``attention + entropy_weight * softmax(entropy)``; both terms sum to 1 over the image's patches."""
    if entropy is None or entropy_weight == 0:
        return attention
    return attention + entropy_weight * entropy.float().softmax(dim=-1)


# ------------------------------------------------------------------------------------------------ stage 0


@dataclass(frozen=True)
class TokenGrid:
    """A rectangle of packed tokens: ``rows x width`` tokens from ``start``, row-major (a newline column counts as a
    column, as in the release)."""

    start: int
    rows: int
    width: int


@dataclass
class Stage0Result:
    kept: torch.Tensor
    """Ascending positions, in the image's packed tokens, of the tokens that enter the LLM."""
    features: torch.Tensor
    """``[kept, hidden]``: their features, recycled tokens replaced by their cell's weighted average."""
    importance: torch.Tensor
    """``[kept]``: their importance, carried to the LLM stages."""
    recycled: torch.Tensor
    """Positions (in the packed tokens) that hold a recycled token, ascending."""


def recycle_stage0(
    features: torch.Tensor, importance: torch.Tensor, keep: float, cell_side: float, grids: Sequence[TokenGrid]
) -> Stage0Result:
    """VFlowOpt's stage 0 on one image's packed tokens ``features`` ``[L, hidden]`` with importance ``[L]``.

    ``round(L * (1 - keep))`` tokens are removed, plus ``int(L / cell_side**2)`` slots for recycled tokens, lowest
    importance first. The removed tokens are grouped by spatial cell (``cell_side`` tokens square, within each of
    ``grids``); each group becomes one token, the importance-weighted average of its features, at the place of its
    most important member, which keeps its own importance. Everything else keeps its order.
    """
    length = features.shape[0]
    removed = round(length * (1 - keep))
    slots = int(length / (cell_side * cell_side))
    count = min(length, removed + slots)
    importance = importance.float()
    order = torch.sort(importance, stable=True).indices
    pruned = order[:count]
    keep_flags = torch.ones(length, dtype=torch.bool, device=features.device)
    keep_flags[pruned] = False

    cell = torch.full((length,), -1, dtype=torch.long, device=features.device)
    offset = 0
    for grid in grids:
        positions = torch.arange(grid.rows * grid.width, device=features.device)
        row = torch.div(positions, grid.width, rounding_mode="floor")
        column = positions % grid.width
        cells_across = math.floor((grid.width - 1) / cell_side) + 1
        cell_row = torch.floor(row / cell_side).long()
        cell_column = torch.floor(column / cell_side).long()
        cell[grid.start : grid.start + grid.rows * grid.width] = offset + cell_row * cells_across + cell_column
        offset += (math.floor((grid.rows - 1) / cell_side) + 1) * cells_across
    if bool((cell[pruned] < 0).any()):
        raise ValueError("a pruned token lies outside every grid; the packed layout and its grids disagree")

    features = features.clone()
    recycled = []
    pruned_cells = cell[pruned]
    for group_cell in torch.unique(pruned_cells).tolist():
        members = pruned[pruned_cells == group_cell]
        weights = importance[members]
        total = weights.sum()
        weights = weights / total if float(total) > 0 else torch.full_like(weights, 1.0 / len(members))
        best = members[torch.argmax(importance[members])]
        features[best] = (weights.to(features.dtype)[:, None] * features[members]).sum(dim=0)
        keep_flags[best] = True
        recycled.append(int(best))
    kept = keep_flags.nonzero().squeeze(-1)
    return Stage0Result(
        kept=kept,
        features=features[kept],
        importance=importance[kept],
        recycled=torch.tensor(sorted(recycled), dtype=torch.long, device=features.device),
    )


# ------------------------------------------------------------------------------------------------ LLM stages and budget


def keep_most_important(importance: torch.Tensor, keep: float) -> torch.Tensor:
    """``[n]`` bool: all but the ``round(n * (1 - keep))`` lowest-importance tokens (ties: the earlier goes first)."""
    mask = torch.ones(len(importance), dtype=torch.bool, device=importance.device)
    mask[torch.sort(importance.float(), stable=True).indices[: round(len(importance) * (1 - keep))]] = False
    return mask


def llm_stage_keeps(importance: torch.Tensor, keeps: Sequence[float]) -> list[torch.Tensor]:
    """For each LLM stage, ``[current tokens]`` bool: which of the then-current visual tokens stay.

    Stage ``j`` drops ``round(n * (1 - keeps[j]))`` of its ``n`` tokens, lowest carried importance first.
    """
    masks = []
    current = importance.float()
    for keep in keeps:
        masks.append(keep_most_important(current, keep))
        current = current[masks[-1]]
    return masks


class ImportanceDropper:
    """VFlowOpt's LLM stages as a :class:`~flowcut_llm_stage.TokenDropper` for :func:`run_layer_groups`.

    Before decoder layer ``layers[j]`` runs, each image keeps ``keeps[j]`` of its then-current visual tokens, by the
    importance they carry (:data:`IMPORTANCE`, set by stage 0). Images are handled one by one, so an image's selection
    never depends on its batch-mates. Layers read nothing: the drop happens before the layer, not after it.
    """

    def __init__(self, layers: Sequence[int], keeps: Sequence[float]):
        self.layers = tuple(layers)
        self.keeps = tuple(keeps)

    @property
    def group_starts(self) -> tuple[int, ...]:
        return (0, *self.layers)

    def observe(self, layer_idx: int, layer) -> nullcontext:
        return nullcontext()

    def select(self, next_layer: int, layout: TokenLayout, position_embeddings) -> torch.Tensor:
        keep_share = self.keeps[self.layers.index(next_layer)]
        image_index = layout.info[IMAGE_INDEX]
        importance = layout.info[IMPORTANCE].to(image_index.device)
        keep = layout.mask.clone().to(image_index.device)
        for row in range(keep.shape[0]):
            for image in image_index[row][image_index[row] >= 0].unique().tolist():
                columns = (image_index[row] == image).nonzero().squeeze(-1)
                keep[row, columns] = keep_most_important(importance[row, columns], keep_share)
        return keep.to(layout.mask.device)


def stage_lengths(num_layers: int, llm_layers: Sequence[int]) -> list[int]:
    """Decoder layers per stage: before the first LLM stage, between stages, and after the last."""
    bounds = [0, *llm_layers, num_layers]
    return [end - start for start, end in zip(bounds[:-1], bounds[1:])]


def average_retention(settings: VFlowOptSettings, num_layers: int) -> float:
    """The share of visual tokens kept, averaged over the decoder layers: VFlowOpt's "x% tokens" budget."""
    kept, total = settings.vision_keep, 0.0
    for length, keep in zip(stage_lengths(num_layers, settings.llm_layers), (1.0, *settings.llm_keeps)):
        kept *= keep
        total += length * kept
    return total / num_layers


def solve_last_ratio(budget: float, vision_keep: float, earlier_keeps: Sequence[float], llm_layers: Sequence[int], num_layers: int) -> float:
    """The last LLM stage's keep ratio that meets ``budget`` (average retention), capped at 1."""
    lengths = stage_lengths(num_layers, llm_layers)
    kept, used = vision_keep, lengths[0] * vision_keep
    for length, keep in zip(lengths[1:-1], earlier_keeps):
        kept *= keep
        used += length * kept
    return min(1.0, (num_layers * budget - used) / lengths[-1] / kept)


# ------------------------------------------------------------------------------------------------ config fields


def validate_share(name: str, upper: float = 1.0):
    def validate(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not 0.0 < value <= upper:
            raise ValueError(f"{name} must be a number in (0, {upper:g}], got {value!r}.")
        return float(value)

    return validate


def validate_at_least(name: str, minimum: float = 0.0):
    def validate(value: object) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < minimum:
            raise ValueError(f"{name} must be a number >= {minimum:g}, got {value!r}.")
        return float(value)

    return validate


def validate_entropy_weight(value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ValueError(f"vflowopt_entropy_weight must be a number (the search uses [-1, 1]), got {value!r}.")
    return float(value)


def validate_layers(value: object) -> list[int]:
    if not isinstance(value, (list, tuple)) or any(isinstance(v, bool) or not isinstance(v, int) or v < 1 for v in value):
        raise ValueError(f"vflowopt_llm_layers must be a list of decoder layer indices >= 1 (e.g. [9, 18]), got {value!r}.")
    return list(value)


def validate_keeps(value: object) -> list[float]:
    if not isinstance(value, (list, tuple)) or any(
        isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 < v <= 1 for v in value
    ):
        raise ValueError(f"vflowopt_llm_keeps must be a list of shares in (0, 1] (e.g. [1.0, 0.6]), got {value!r}.")
    return [float(v) for v in value]


def validate_vflowopt_enabled(value: object) -> bool:
    if not isinstance(value, bool):
        raise ValueError(f"vflowopt_enabled must be True or False, got {value!r}.")
    return value


def method_validator(methods: Sequence[str], family: str):
    """The validator of a family's ``pruning_method`` field: one of ``methods``."""

    def validate(method: object) -> str:
        if method not in methods:
            raise ValueError(f"pruning_method must be one of {list(methods)} for {family}, got {method!r}.")
        return method

    return validate


VFLOWOPT_FIELD_VALIDATORS = {
    "vflowopt_enabled": validate_vflowopt_enabled,
    "vflowopt_vision_keep": validate_share("vflowopt_vision_keep"),
    "vflowopt_threshold": validate_at_least("vflowopt_threshold"),
    "vflowopt_cell_side": validate_at_least("vflowopt_cell_side", minimum=1.0),
    "vflowopt_entropy_weight": validate_entropy_weight,
    "vflowopt_llm_layers": validate_layers,
    "vflowopt_llm_keeps": validate_keeps,
}
"""Every ``vflowopt_*`` config field and its validator (a family adds its ``pruning_method`` validator)."""


def vflowopt_fields(settings: VFlowOptSettings) -> dict[str, Any]:
    """The config fields that store ``settings``."""
    return {
        "vflowopt_vision_keep": settings.vision_keep,
        "vflowopt_threshold": settings.threshold,
        "vflowopt_cell_side": settings.cell_side,
        "vflowopt_entropy_weight": settings.entropy_weight,
        "vflowopt_llm_layers": list(settings.llm_layers),
        "vflowopt_llm_keeps": list(settings.llm_keeps),
    }


def vflowopt_settings(config) -> VFlowOptSettings:
    """The settings a config stores (validated together: one LLM keep share per LLM layer, ...)."""
    return VFlowOptSettings(
        vision_keep=config.vflowopt_vision_keep,
        threshold=config.vflowopt_threshold,
        cell_side=config.vflowopt_cell_side,
        entropy_weight=config.vflowopt_entropy_weight,
        llm_layers=tuple(config.vflowopt_llm_layers),
        llm_keeps=tuple(config.vflowopt_llm_keeps),
    )


def vflowopt_running(config) -> bool:
    """Whether a config's model prunes with VFlowOpt now (its method is VFlowOpt, and it is switched on)."""
    return getattr(config, "pruning_method", "flowcut") == "vflowopt" and bool(getattr(config, "vflowopt_enabled", True))


def configure_vflowopt_fields(config, validators: Mapping[str, Callable], enabled: bool | None = None, **settings) -> None:
    """Changes VFlowOpt settings on ``config`` (short names: ``vision_keep``, ``threshold``, ``llm_keeps``, ...) or
    switches it on or off; all values are checked, together, before any is changed."""
    changes = {f"vflowopt_{k}": v for k, v in {"enabled": enabled, **settings}.items() if v is not None}
    for name, value in changes.items():
        validator = validators.get(name)
        if validator is None:
            known = sorted(k.removeprefix("vflowopt_") for k in validators if k.startswith("vflowopt_"))
            raise ValueError(f"{name.removeprefix('vflowopt_')} is not a VFlowOpt setting; known: {known}.")
        validator(value)
    merged = SimpleNamespace(**{**{k: getattr(config, k) for k in VFLOWOPT_FIELD_VALIDATORS}, **changes})
    vflowopt_settings(merged)
    for name, value in changes.items():
        setattr(config, name, value)


def preset_for_depth(name: str, num_layers: int, model: str = PRESET_MODEL) -> VFlowOptSettings:
    """A released preset (``"10%"``, ``"25%"``, ``"50%"``) for a language model of ``num_layers`` decoder layers.

    At the depth it was searched on (28, LLaVA-OneVision-7B's Qwen2) it is the released setting itself. At another
    depth (Vicuna-7B's 32 layers, ...) it is transferred, not searched: the stage layers are scaled to the depth, the
    vision-stage values and the earlier LLM shares are kept, and the last LLM share is solved so that the average
    retention (the budget) is the released one. ``flowcut-hf search`` finds settings for the model itself.
    """
    released = VFLOWOPT_PRESETS[model]
    if name not in released:
        raise ValueError(f"unknown VFlowOpt preset {name!r}; released: {sorted(released)}.")
    preset = released[name]
    if num_layers == PRESET_DEPTH:
        return preset
    if num_layers < 2:
        raise ValueError(f"VFlowOpt's LLM stages need at least 2 decoder layers, the model has {num_layers}.")
    layers = sorted({min(num_layers - 1, max(1, round(layer * num_layers / PRESET_DEPTH))) for layer in preset.llm_layers})
    earlier = preset.llm_keeps[: len(layers) - 1]
    budget = average_retention(preset, PRESET_DEPTH)
    last = solve_last_ratio(budget, preset.vision_keep, earlier, layers, num_layers)
    return VFlowOptSettings(
        preset.vision_keep, preset.threshold, preset.cell_side, preset.entropy_weight, tuple(layers),
        (*earlier, max(last, 1e-3)),
    )


# ------------------------------------------------------------------------------------------------ model adapters


def crop_importance_maps(
    queries: torch.Tensor, keys: torch.Tensor, heads: int, scaling: float, threshold: float, leading_tokens: int = 0
) -> torch.Tensor:
    """``[crops, tokens - leading_tokens]``: :func:`importance_map` of each crop of a vision layer's recorded q and k
    projections (``[crops, tokens, heads * head_dim]``). The important set is chosen over every token, a CLS included;
    the ``leading_tokens`` (CLS) columns are then left out, since only patches become visual tokens."""
    crops, tokens, _ = queries.shape
    return torch.stack([
        importance_map(queries[crop].view(tokens, heads, -1), keys[crop].view(tokens, heads, -1), scaling, threshold)[
            leading_tokens:
        ]
        for crop in range(crops)
    ])


def map_layer_index(vision_feature_layer: object, num_layers: int) -> int:
    """The vision layer whose output is the image feature (``hidden_states[k]`` is the output of layer ``k - 1``):
    VFlowOpt builds its map there, the last layer that counts."""
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ValueError(
            f"VFlowOpt builds its map at one vision layer; vision_feature_layer={vision_feature_layer!r} selects "
            "several. Set vflowopt_enabled=False to run this model unpruned."
        )
    layer = vision_feature_layer - 1 if vision_feature_layer > 0 else num_layers + vision_feature_layer
    if not 0 <= layer < num_layers:
        raise ValueError(f"vision_feature_layer={vision_feature_layer} is outside the {num_layers}-layer vision tower.")
    return layer


def run_with_importance_maps(
    vision_tower: nn.Module,
    vision_feature_layer: int,
    threshold: float,
    run: Callable[[], Any],
    leading_tokens: int = 0,
) -> tuple[Any, torch.Tensor]:
    """Calls ``run()`` (the stock image-feature computation) and returns its result with the ``[crops, patches]``
    importance maps of the feature layer, computed from that layer's own q and k projections (read with hooks), so
    the tower runs unchanged under every attention backend. ``leading_tokens``: 1 for a tower with a CLS token."""
    encoder = getattr(vision_tower, "vision_model", vision_tower).encoder
    attention = encoder.layers[map_layer_index(vision_feature_layer, len(encoder.layers))].self_attn
    with record_module_outputs(attention.q_proj, attention.k_proj) as captured:
        result = run()
    with torch.no_grad():
        maps = crop_importance_maps(*captured, attention.num_heads, attention.scale, threshold, leading_tokens)
    return result, maps


def crop_entropies(crop_pixels: torch.Tensor, patch_size: int, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """``[crops, patches]``: :func:`patch_entropy` of each normalised crop ``[crops, channels, height, width]``."""
    return torch.stack([patch_entropy(pixels, patch_size, mean, std) for pixels in crop_pixels])


def packed_grids(newline: torch.Tensor, crops: int, side: int) -> list[TokenGrid]:
    """The spatial grids of one image's packed tokens, from its ``newline`` flags (``[packed]`` bool): the
    ``side x side`` base crop, then the local grid whose rows end with a newline (its width includes that column), or
    the single newline of a one-crop image. Without newlines (LLaVA-1.5), the base crop alone."""
    length = len(newline)
    grids = [TokenGrid(0, side, side)]
    if length == side * side:
        return grids
    rest = length - side * side
    newlines = newline[side * side :].nonzero().squeeze(-1)
    if crops > 1 and len(newlines):
        width = int(newlines[0]) + 1
        return [*grids, TokenGrid(side * side, rest // width, width)]
    return [*grids, TokenGrid(side * side, 1, rest)]


@dataclass
class PackedStage0:
    """Stage 0 of every image of a call, in the per-image fields of a family's image-features output."""

    pooler_output: list[torch.Tensor]
    placeholder_counts: list[int]
    kept_positions: list[torch.Tensor]
    recycled_positions: list[torch.Tensor]
    importance: list[torch.Tensor]
    prunable: list[bool]


def stage0_images(
    packed_features: Sequence[torch.Tensor],
    packed_importance: Sequence[torch.Tensor],
    packed_newlines: Sequence[torch.Tensor],
    crops_per_image: Sequence[int],
    side: int,
    settings: VFlowOptSettings,
) -> PackedStage0:
    """:func:`recycle_stage0` on each image's packed tokens, one image at a time (never a batch-wide selection)."""
    result = PackedStage0([], [], [], [], [], [])
    for features, importance, newline, crops in zip(packed_features, packed_importance, packed_newlines, crops_per_image):
        stage0 = recycle_stage0(features, importance, settings.vision_keep, settings.cell_side, packed_grids(newline, crops, side))
        result.pooler_output.append(stage0.features)
        result.placeholder_counts.append(len(features))
        result.kept_positions.append(stage0.kept)
        result.recycled_positions.append(stage0.recycled)
        result.importance.append(importance.float())
        result.prunable.append(True)
    return result


def check_llm_layers(settings: VFlowOptSettings, num_layers: int) -> None:
    if settings.llm_layers and settings.llm_layers[-1] >= num_layers:
        raise ValueError(
            f"vflowopt_llm_layers {list(settings.llm_layers)} reach past the language model's {num_layers} layers; "
            "flowcut_hf.prune(model, method='vflowopt', preset=...) fits a preset to the model's depth."
        )


def vflowopt_prefill(
    language_model,
    config,
    inputs_embeds: torch.Tensor,
    placeholders: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_output,
    settings: VFlowOptSettings,
    cache,
    use_cache: bool,
    prompt_length: int,
    **layer_kwargs,
) -> LayerGroupsOutput:
    """The LLM side of VFlowOpt on a prefill: each image's placeholder span becomes its stage-0 tokens, then the LLM
    stages drop by the carried importance (:class:`ImportanceDropper`).

    ``image_output`` carries the fields of :class:`PackedStage0`. As in the authors' code, rotary positions run
    contiguously over the sequence after stage 0, and from then on stay with each token.
    """
    check_llm_layers(settings, config.text_config.num_hidden_layers)
    layout = splice_image_features(
        inputs_embeds, placeholders, attention_mask, image_output.pooler_output, image_output.placeholder_counts,
        image_output.prunable, prompt_length=prompt_length, kept_offsets=image_output.kept_positions,
    )
    kept_importance = torch.cat([
        importance[kept.to(importance.device)] for importance, kept in zip(image_output.importance, image_output.kept_positions)
    ])
    is_image = layout.info[IMAGE_INDEX] >= 0
    importance = torch.zeros(is_image.shape, dtype=torch.float32, device=is_image.device)
    importance[is_image] = kept_importance.to(importance.device)
    layout.info[IMPORTANCE] = importance
    layout.info[ROPE_POSITION] = (layout.mask.long().cumsum(-1) - 1).clamp(min=0).masked_fill(~layout.mask, 0)
    if use_cache and cache is None:
        cache = DynamicCache(config=config)
    dropper = ImportanceDropper(settings.llm_layers, settings.llm_keeps)
    return run_layer_groups(
        language_model, layout, dropper.group_starts, past_state=None, cache=cache, use_cache=use_cache,
        dropper=dropper, prompt_length=prompt_length, **layer_kwargs,
    )


__all__ = [
    "PRESET_DEPTH",
    "PRESET_MODEL",
    "PackedStage0",
    "VFLOWOPT_FIELD_VALIDATORS",
    "Stage0Result",
    "check_llm_layers",
    "map_layer_index",
    "run_with_importance_maps",
    "configure_vflowopt_fields",
    "crop_entropies",
    "crop_importance_maps",
    "method_validator",
    "packed_grids",
    "preset_for_depth",
    "stage0_images",
    "vflowopt_fields",
    "vflowopt_prefill",
    "vflowopt_running",
    "vflowopt_settings",
    "TokenGrid",
    "VFLOWOPT_PRESETS",
    "ImportanceDropper",
    "VFlowOptSettings",
    "average_retention",
    "combine_importance",
    "importance_map",
    "keep_most_important",
    "llm_stage_keeps",
    "patch_entropy",
    "recycle_stage0",
    "solve_last_ratio",
    "stage_lengths",
]
