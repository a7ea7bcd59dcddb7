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
from collections.abc import Sequence
from contextlib import nullcontext
from dataclasses import dataclass

import torch

from .flowcut_llm_stage import IMAGE_INDEX, IMPORTANCE, TokenLayout


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


__all__ = [
    "Stage0Result",
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
