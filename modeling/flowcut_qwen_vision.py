"""FlowCut's vision stage on a Qwen2-VL / Qwen2.5-VL ViT: whole 2x2 merge units, scored per image (per video frame).

The ViT's own blocks run unchanged; between them FlowCut drops whole *merge units*, the 2x2 patches the PatchMerger
fuses into one LLM token, so the ViT's own merger always receives real 2x2 blocks. Each image (each video frame, as the
ViT attends frame by frame) is scored on its own, respecting ``cu_seqlens``: its global query is the mean of its
tokens' per-head queries, a patch scores its global attention times the L1 norm of its head-mean value, and a unit the
sum of its four patches. The cumulative 0.5/0.5 score and the entropy-adaptive count follow CLIP's schedule, counted
back from the last block. Qwen2.5-VL's window attention keeps working: its windows are recounted after every drop, so
they may shrink, but attention never crosses a window, a frame or an image.

The loop is shared by the transformers remote code and the vLLM plug-in: a :class:`TransformersQwenViT` (the default)
or another runner says how to embed the patches, run one block (returning its fused q/k/v projection when asked) and
merge, so both select the same units from the same weights.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from transformers.vision_utils import get_vision_position_ids, get_vision_window_index

from .flowcut_core import FlowCutSelector, mean_query_signals, record_module_outputs
from .flowcut_llm_stage import rotate_half_rope
from .flowcut_settings import FlowCutSettings


def merge_units(grid_thw: torch.Tensor, spatial_merge_size: int) -> list[int]:
    """Merge units (LLM tokens) of each image or video: ``t * h * w / merge**2``, the stock placeholder count."""
    return [int(t * h * w) // spatial_merge_size**2 for t, h, w in torch.as_tensor(grid_thw).tolist()]


def split_evenly(total: int, parts: int) -> list[int]:
    """``total`` split over ``parts`` as evenly as possible, the larger shares first."""
    share, extra = divmod(total, parts)
    return [share + (index < extra) for index in range(parts)]


@dataclass
class QwenVisionResult:
    """Per image (or video) of one vision call."""

    tokens: list[torch.Tensor]
    """``[kept units, text_hidden]``: the merger's output for the kept units, in raster order."""
    kept_units: list[torch.Tensor]
    """Raster indices (``t, h/2, w/2`` flattened) of the kept merge units, ascending."""
    token_schedule: list[list[int]]
    """Patch tokens the image had in each vision block."""


class TransformersQwenViT:
    """Runs the pieces of a transformers Qwen2-VL / Qwen2.5-VL ViT for :func:`encode_qwen_vision_with_flowcut`.

    Rotary tables are ``[patches, head_dim]`` in the rotate-half layout; the fused projection a block returns is
    ``[patches, 3 * heads * head_dim]`` (q, k, v of every head)."""

    def embed(self, visual: torch.nn.Module, pixel_values: torch.Tensor, grid_thw: torch.Tensor):
        """``(patch embeddings, cos, sin)`` in the ViT's processing order (merge units contiguous)."""
        hidden = visual.patch_embed(pixel_values.type(visual.dtype))
        cos, sin = visual.rotary_pos_emb(hidden, get_vision_position_ids(grid_thw, visual.spatial_merge_size))
        return hidden, cos, sin

    def attention_geometry(self, visual: torch.nn.Module) -> tuple[int, int, float]:
        attention = visual.blocks[0].attn
        return attention.num_heads, attention.head_dim, attention.scaling

    def run_block(self, block, hidden, cu_seqlens, max_seqlen: int, cos, sin, with_qkv: bool):
        """``(output, fused q/k/v or None)``."""
        kwargs = dict(cu_seqlens=cu_seqlens, max_seqlen=max_seqlen, position_embeddings=(cos, sin))
        if not with_qkv:
            return block(hidden, **kwargs), None
        with record_module_outputs(block.attn.qkv) as captured:
            output = block(hidden, **kwargs)
        return output, captured[0]

    def merge(self, visual: torch.nn.Module, hidden: torch.Tensor) -> torch.Tensor:
        return visual.merger(hidden)


def encode_qwen_vision_with_flowcut(
    visual: torch.nn.Module,
    pixel_values: torch.Tensor,
    grid_thw: torch.Tensor,
    vision_targets: list[int],
    settings: FlowCutSettings,
    runner: TransformersQwenViT | None = None,
) -> QwenVisionResult:
    """Runs a Qwen2-VL / Qwen2.5-VL ViT with FlowCut, keeping ``vision_targets[i]`` merge units of item ``i``.

    A video's target is spread evenly over its frames. ``runner`` runs the ViT's pieces (transformers' by default).
    Returns the merged tokens and the kept units per item.
    """
    runner = runner or TransformersQwenViT()
    grid_thw = torch.as_tensor(grid_thw)
    merge = visual.spatial_merge_size
    unit = merge * merge
    hidden, cos, sin = runner.embed(visual, pixel_values, grid_thw)
    device = hidden.device
    total_units = hidden.shape[0] // unit

    windowed = hasattr(visual, "fullatt_block_indexes")
    if windowed:
        window_index, cu_window = get_vision_window_index(grid_thw, merge, visual.window_size, visual.patch_size)
        unit_order = window_index.to(device)  # processing position -> raster unit
        window_bounds = (cu_window.to(device).long() // unit)[1:]
        window_of = torch.searchsorted(window_bounds, torch.arange(total_units, device=device), right=True)
        num_windows = len(window_bounds)
    else:
        unit_order = torch.arange(total_units, device=device)
        window_of = None
        num_windows = 0

    def by_units(tensor: torch.Tensor, units: torch.Tensor) -> torch.Tensor:
        return tensor.view(-1, unit, *tensor.shape[1:])[units].flatten(0, 1)

    hidden, cos, sin = (by_units(t, unit_order) for t in (hidden, cos, sin))

    # One selector per attention segment (an image, or one frame of a video), in processing order.
    selectors: list[FlowCutSelector] = []
    segment_item: list[int] = []
    segment_start: list[int] = []  # first processing unit of the segment
    start = 0
    for item, ((frames, height, width), target) in enumerate(zip(grid_thw.tolist(), vision_targets)):
        frame_units = height * width // unit
        for frame_target in split_evenly(target, frames):
            selectors.append(
                FlowCutSelector(
                    target_length=max(1, frame_target),
                    last_layer=len(visual.blocks),
                    batch_size=1,
                    num_patches=frame_units,
                    device=device,
                    prune_interval=settings.prune_interval,
                    history_weight=settings.history_weight,
                    num_prefix_tokens=0,
                )
            )
            segment_item.append(item)
            segment_start.append(start)
            start += frame_units
    schedules: list[list[int]] = [[] for _ in vision_targets]
    full_attention_blocks = set(getattr(visual, "fullatt_block_indexes", range(len(visual.blocks))))
    heads, head_dim, scaling = runner.attention_geometry(visual)

    for block_idx, block in enumerate(visual.blocks):
        counts = [selector.keep_indices.shape[1] for selector in selectors]
        per_item = [0] * len(vision_targets)
        for item, count in zip(segment_item, counts):
            per_item[item] += count * unit
        for item, tokens in enumerate(per_item):
            schedules[item].append(tokens)
        kept_units = torch.cat([s.keep_indices[0] + first for s, first in zip(selectors, segment_start)])
        if block_idx in full_attention_blocks:
            lengths = torch.tensor(counts, device=device) * unit
        else:
            lengths = torch.bincount(window_of[kept_units], minlength=num_windows) * unit
            lengths = lengths[lengths > 0]
        cu_seqlens = F.pad(lengths.cumsum(0, dtype=torch.int32), (1, 0))
        active = [index for index, selector in enumerate(selectors) if selector.active]
        hidden, fused_qkv = runner.run_block(block, hidden, cu_seqlens, int(lengths.max()), cos, sin, bool(active))
        if not active:
            continue
        with torch.no_grad():
            query, key, value = fused_qkv.reshape(-1, 3, heads, head_dim).float().unbind(1)
            segment_bounds = [0, *torch.tensor(counts).cumsum(0).tolist()]
            keep_flags = torch.ones(hidden.shape[0] // unit, dtype=torch.bool, device=device)
            for index in active:
                first, last = segment_bounds[index] * unit, segment_bounds[index + 1] * unit
                rows = slice(first, last)
                attention_weights, value_l1 = mean_query_signals(
                    rotate_half_rope(query[rows], cos[rows].float(), sin[rows].float()),
                    rotate_half_rope(key[rows], cos[rows].float(), sin[rows].float()),
                    value[rows],
                    scaling=scaling,
                )
                unit_attention = attention_weights.view(-1, unit).sum(-1)
                unit_score = (attention_weights * value_l1).view(-1, unit).sum(-1)
                kept = selectors[index].step(block_idx, unit_score[None], unit_attention[None])
                if kept is not None:
                    segment_flags = torch.zeros(counts[index], dtype=torch.bool, device=device)
                    segment_flags[kept[0]] = True
                    keep_flags[segment_bounds[index] : segment_bounds[index + 1]] = segment_flags
        if not bool(keep_flags.all()):
            token_flags = keep_flags.repeat_interleave(unit)
            hidden, cos, sin = hidden[token_flags], cos[token_flags], sin[token_flags]

    kept_units = torch.cat([s.keep_indices[0] + first for s, first in zip(selectors, segment_start)])
    raster_units = unit_order[kept_units]
    merged = runner.merge(visual, hidden)
    item_of_unit = torch.cat(
        [torch.full((s.keep_indices.shape[1],), item, device=device) for s, item in zip(selectors, segment_item)]
    )
    item_offsets = [0, *torch.tensor(merge_units(grid_thw, merge)).cumsum(0).tolist()]
    tokens, kept = [], []
    for item in range(len(vision_targets)):
        rows = (item_of_unit == item).nonzero().squeeze(-1)
        order = raster_units[rows].argsort()
        tokens.append(merged[rows[order]])
        kept.append(raster_units[rows[order]] - item_offsets[item])
    return QwenVisionResult(tokens=tokens, kept_units=kept, token_schedule=schedules)


__all__ = [
    "QwenVisionResult",
    "TransformersQwenViT",
    "encode_qwen_vision_with_flowcut",
    "merge_units",
    "split_evenly",
]
