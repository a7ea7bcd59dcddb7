"""Qwen2-VL and Qwen2.5-VL in vLLM.

FlowCut on Qwen prunes in the ViT and again inside the language model. vLLM keeps one KV-cache length per request in
every layer, so it serves the vision stage alone: a variant whose config sets ``flowcut_llm_stage=False``
(``vllm serve <variant> --hf-overrides '{"flowcut_llm_stage": false}'``) keeps each image's retained amount in the ViT,
the schedule transformers runs with the same setting. Without it, a variant is refused at load with that command.

- The request processor emits the retained count of placeholders per image (and video), known from the image's grid.
- vLLM's own ViT runs FlowCut's loop (:func:`flowcut_hf.modeling.flowcut_qwen_vision.encode_qwen_vision_with_flowcut`,
  the transformers remote code's) through :class:`VllmQwenViT` (Qwen2.5-VL: :class:`VllmQwen2_5ViT`, whose windows the
  loop recounts as units drop); the signals come from its fused q/k/v projection, gathered over the tensor-parallel
  ranks, so every rank keeps the same units.
- Kept tokens keep their true (t, h, w) M-RoPE positions and text its stock ones. Text positions do not depend on
  which units are kept, so :meth:`FlowCutQwenForVllm.get_mrope_input_positions` sets them when the prompt is
  scheduled, with each image's placeholders at the image's origin; the ViT then appends each kept unit's (t, h, w)
  offset to its embedding (two exact channels per axis), and :meth:`~FlowCutQwenForVllm.embed_input_ids` and
  :meth:`~FlowCutQwenForVllm.forward` move the placeholders to their units in the step that embeds them.

Stock checkpoints run exactly as in vLLM's own classes.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from functools import partial
from typing import Any

import numpy as np
import torch
from vllm.distributed import tensor_model_parallel_all_gather
from vllm.model_executor.models.qwen2_5_vl import (
    Qwen2_5_VLDummyInputsBuilder,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLMultiModalProcessor,
    Qwen2_5_VLProcessingInfo,
)
from vllm.model_executor.models.qwen2_vl import (
    Qwen2VLDummyInputsBuilder,
    Qwen2VLForConditionalGeneration,
    Qwen2VLMultiModalProcessor,
    Qwen2VLProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY
from vllm.multimodal.processing import PromptReplacement

from ...modeling.flowcut_core import record_module_outputs
from ...modeling.flowcut_qwen_vision import TransformersQwenViT, encode_qwen_vision_with_flowcut, merge_units
from ...modeling.flowcut_settings import FlowCutSettings
from ...vllm_support import NotServableError, refuse_unservable

OFFSET_BASE = 256
"""Each (t, h, w) offset rides in two embedding channels, ``offset // 256`` and ``offset % 256``: integers up to 256 are
exact in bfloat16 and float16, so offsets up to 65535 survive the encoder cache in the model's dtype."""
OFFSET_CHANNELS = 6


def flowcut_settings_to_serve(config) -> FlowCutSettings | None:
    """The FlowCut settings vLLM runs a Qwen2-VL checkpoint with (vision stage only), None for a stock one; refuses a
    variant it cannot serve pruned."""
    if refuse_unservable(config) is None:
        return None
    settings = FlowCutSettings.from_config(config, None)
    if settings.target_num is None and settings.retain_ratio is None:
        raise NotServableError("flowcut-hf: this Qwen2-VL variant sets neither flowcut_retain_ratio nor flowcut_target_num")
    return settings


def retained_units(config, units: int) -> int:
    settings = flowcut_settings_to_serve(config)
    return units if settings is None else settings.retained(units)


class FlowCutQwenProcessingInfo:
    """Counts each image's (video's) retained amount of placeholders for a variant, the stock count otherwise."""

    def _get_vision_info(self, *args, **kwargs):
        size, tokens = super()._get_vision_info(*args, **kwargs)
        return size, retained_units(self.get_hf_config(), tokens)


class FlowCutQwenMultiModalProcessor:
    """Replaces each image's (video's) placeholder by its retained amount for a variant, as the stock count otherwise."""

    def _get_prompt_updates(self, mm_items, hf_processor_mm_kwargs: Mapping[str, Any], out_mm_kwargs) -> Sequence[PromptReplacement]:
        updates = super()._get_prompt_updates(mm_items, hf_processor_mm_kwargs, out_mm_kwargs)
        config = self.info.get_hf_config()
        if flowcut_settings_to_serve(config) is None:
            return updates
        merge = config.vision_config.spatial_merge_size

        def replacement(item_idx: int, modality: str, token_id: int) -> list[int]:
            grid_thw = out_mm_kwargs[modality][item_idx][f"{modality}_grid_thw"].data
            return [token_id] * retained_units(config, merge_units(grid_thw[None], merge)[0])

        return [
            PromptReplacement(
                modality=update.modality, target=update.target,
                replacement=partial(replacement, modality=update.modality, token_id=update.target[0]),
            )
            for update in updates
        ]


class FlowCutQwen2VLProcessingInfo(FlowCutQwenProcessingInfo, Qwen2VLProcessingInfo):
    pass


class FlowCutQwen2_5_VLProcessingInfo(FlowCutQwenProcessingInfo, Qwen2_5_VLProcessingInfo):
    pass


class FlowCutQwen2VLMultiModalProcessor(FlowCutQwenMultiModalProcessor, Qwen2VLMultiModalProcessor):
    pass


class FlowCutQwen2_5_VLMultiModalProcessor(FlowCutQwenMultiModalProcessor, Qwen2_5_VLMultiModalProcessor):
    pass


def processing_info_factory(info_class: type):
    def processing_info(ctx):
        flowcut_settings_to_serve(ctx.get_hf_config())  # a variant vLLM cannot serve is refused before weights load
        return info_class(ctx)

    return processing_info


class VllmQwenViT(TransformersQwenViT):
    """Runs vLLM's Qwen2-VL ViT for FlowCut's loop: its rotary tables are the first half of the rotate-half layout, its
    blocks take ``[patches, 1, dim]``, and its fused q/k/v projection is sharded over tensor-parallel ranks (each rank
    holds a contiguous slice of ``[q; k; v]``)."""

    def __init__(self, visual) -> None:
        self.visual = visual

    def rotary_tables(self, grid_thw: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return self.visual.rot_pos_emb(grid_thw.tolist())

    def embed(self, visual, pixel_values, grid_thw):
        hidden = visual.patch_embed(visual.input_norm(pixel_values.to(device=visual.device), visual.dtype))
        cos, sin = self.rotary_tables(grid_thw)
        return hidden, torch.cat([cos, cos], dim=-1), torch.cat([sin, sin], dim=-1)

    def attention_geometry(self, visual):
        head_dim = visual.blocks[0].attn.hidden_size_per_attention_head
        return visual.num_heads, head_dim, head_dim**-0.5

    def block_kwargs(self, cu_seqlens, cos, sin) -> dict:
        half = cos.shape[-1] // 2
        return dict(
            cu_seqlens=cu_seqlens, rotary_pos_emb_cos=cos[:, :half].contiguous(),
            rotary_pos_emb_sin=sin[:, :half].contiguous(), max_seqlen=self.visual.compute_attn_mask_seqlen(cu_seqlens),
        )

    def gathered_qkv(self, attention, fused: torch.Tensor) -> torch.Tensor:
        """``[patches, 3 * heads * head_dim]`` from one rank's slice of the projection."""
        if attention.tp_size > 1:
            fused = tensor_model_parallel_all_gather(fused.contiguous(), dim=-1)
        return fused.reshape(fused.shape[0], -1)

    def run_block(self, block, hidden, cu_seqlens, max_seqlen, cos, sin, with_qkv):
        kwargs = self.block_kwargs(cu_seqlens, cos, sin)
        if not with_qkv:
            return block(hidden.unsqueeze(1), **kwargs).squeeze(1), None
        with record_module_outputs(block.attn.qkv) as captured:
            output = block(hidden.unsqueeze(1), **kwargs).squeeze(1)
        return output, self.gathered_qkv(block.attn, captured[0][0])


class VllmQwen2_5ViT(VllmQwenViT):
    """vLLM's Qwen2.5-VL ViT: rotary tables per image, blocks that also take ``sequence_lengths``, and a q/k/v projection
    sharded by heads (each rank holds its heads' q, k and v)."""

    def rotary_tables(self, grid_thw):
        tables = [self.visual.rotary_pos_emb_thw(*(int(v) for v in thw)) for thw in grid_thw.tolist()]
        return tuple(torch.cat([table[i].flatten(0, 1) for table in tables]) for i in (0, 1))

    def block_kwargs(self, cu_seqlens, cos, sin) -> dict:
        return {**super().block_kwargs(cu_seqlens, cos, sin), "sequence_lengths": None}

    def gathered_qkv(self, attention, fused):
        if attention.tp_size == 1:
            return fused.reshape(fused.shape[0], -1)
        fused = tensor_model_parallel_all_gather(fused.contiguous(), dim=-1)
        ranks, head_dim = attention.tp_size, attention.hidden_size_per_attention_head
        by_rank = fused.reshape(fused.shape[0], ranks, 3, attention.num_attention_heads_per_partition, head_dim)
        return by_rank.transpose(1, 2).reshape(fused.shape[0], -1)


def unit_offsets(kept_units: torch.Tensor, grid_thw: Sequence[int], merge: int, time_factor: float = 1.0) -> torch.Tensor:
    """``[kept, 3]``: the M-RoPE offset (t, h, w) of each kept raster unit from its image's origin; a video's t is its
    temporal patch times ``time_factor`` (seconds per patch x tokens per second on Qwen2.5-VL), truncated as Qwen's."""
    _, height, width = (int(v) for v in grid_thw)
    per_frame = (height // merge) * (width // merge)
    units = kept_units.long()
    frames = ((units // per_frame).double() * time_factor).long()
    return torch.stack([frames, units % per_frame // (width // merge), units % (width // merge)], dim=-1)


def with_offsets(tokens: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
    channels = torch.cat([offsets // OFFSET_BASE, offsets % OFFSET_BASE], dim=-1).to(tokens.dtype)
    return torch.cat([tokens, channels], dim=-1)


def split_offsets(embedding: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    channels = embedding[:, -OFFSET_CHANNELS:].float().round().long()
    return embedding[:, :-OFFSET_CHANNELS], channels[:, :3] * OFFSET_BASE + channels[:, 3:]


class FlowCutQwenForVllm:
    """What a Qwen-VL class of vLLM gains: its ViT keeps each image's retained amount of merge units for a variant served
    without its LLM stage (``flowcut_llm_stage=False``), each kept token at its unit's M-RoPE position; a stock
    checkpoint runs exactly as in vLLM's own class."""

    vit_runner: type[VllmQwenViT] = VllmQwenViT

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        self.flowcut_settings = flowcut_settings_to_serve(vllm_config.model_config.hf_config)
        if self.flowcut_settings is not None:
            refuse_unsupported_engine_settings(vllm_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)
        self.pending_offsets: tuple[torch.Tensor, torch.Tensor] | None = None

    # ------------------------------------------------------------------------------------------- the vision stage

    def flowcut_items(self, pixel_values, grid_thw, time_factors: Sequence[float] | None = None) -> tuple[torch.Tensor, ...]:
        counts = merge_units(grid_thw, self.visual.spatial_merge_size)
        targets = [self.flowcut_settings.retained(count) for count in counts]
        result = encode_qwen_vision_with_flowcut(
            self.visual, pixel_values, grid_thw, targets, self.flowcut_settings, runner=self.vit_runner(self.visual)
        )
        merge = self.visual.spatial_merge_size
        factors = time_factors if time_factors is not None else [1.0] * len(counts)
        return tuple(
            with_offsets(tokens, unit_offsets(kept, grid, merge, factor).to(tokens.device))
            for tokens, kept, grid, factor in zip(result.tokens, result.kept_units, grid_thw.tolist(), factors)
        )

    def _process_image_input(self, image_input):
        if self.flowcut_settings is None:
            return super()._process_image_input(image_input)
        if image_input["type"] == "image_embeds":
            raise ValueError("flowcut-hf: a FlowCut variant prunes in its vision encoder; send images, not image embeddings")
        return self.flowcut_items(image_input["pixel_values"], image_input["image_grid_thw"])

    def _process_video_input(self, video_input):
        if self.flowcut_settings is None:
            return super()._process_video_input(video_input)
        if video_input["type"] == "video_embeds":
            raise ValueError("flowcut-hf: a FlowCut variant prunes in its vision encoder; send videos, not video embeddings")
        seconds = video_input.get("second_per_grid_ts")
        per_second = getattr(self.config.vision_config, "tokens_per_second", 1.0)
        factors = None if seconds is None else [float(s) * per_second for s in seconds.tolist()]
        return self.flowcut_items(video_input["pixel_values_videos"], video_input["video_grid_thw"], factors)

    # ------------------------------------------------------------------------------------------------- positions

    def get_mrope_input_positions(self, input_tokens: list[int], mm_features) -> tuple[torch.Tensor, int]:
        if self.flowcut_settings is None:
            return super().get_mrope_input_positions(input_tokens, mm_features)
        pieces, consumed, next_position = [], 0, 0
        for offset, frames, height, width, time_factor in self.iter_mm_grid_thw(mm_features):
            text = offset - consumed
            pieces.append(np.broadcast_to(np.arange(text), (3, text)) + next_position)
            origin = next_position + text
            kept = self.flowcut_settings.retained(frames * height * width)
            pieces.append(np.full((3, kept), origin))  # moved to each kept unit's position when embedded
            next_position = origin + max(int((frames - 1) * time_factor), height - 1, width - 1) + 1
            consumed = offset + kept
        text = len(input_tokens) - consumed
        pieces.append(np.broadcast_to(np.arange(text), (3, text)) + next_position)
        positions = np.concatenate(pieces, axis=1)
        return torch.from_numpy(positions), next_position + text - len(input_tokens)

    def embed_input_ids(self, input_ids, multimodal_embeddings=None, *, is_multimodal=None):
        self.pending_offsets = None
        if self.flowcut_settings is None or not multimodal_embeddings:
            return super().embed_input_ids(input_ids, multimodal_embeddings, is_multimodal=is_multimodal)
        embeddings, offsets = zip(*(split_offsets(embedding) for embedding in multimodal_embeddings))
        self.pending_offsets = (is_multimodal, torch.cat(offsets))
        return super().embed_input_ids(input_ids, list(embeddings), is_multimodal=is_multimodal)

    def forward(self, input_ids, positions, intermediate_tensors=None, inputs_embeds=None, **kwargs):
        pending, self.pending_offsets = self.pending_offsets, None
        if pending is not None:
            is_multimodal, offsets = pending
            rows = is_multimodal.nonzero().squeeze(-1).to(positions.device)
            positions = positions.clone()
            positions[:, rows] += offsets.to(positions).T
        return super().forward(input_ids, positions, intermediate_tensors, inputs_embeds, **kwargs)


def refuse_unsupported_engine_settings(vllm_config) -> None:
    """The engine settings a Qwen-VL variant cannot run with, refused at load with what works."""
    if vllm_config.parallel_config.pipeline_parallel_size > 1:
        raise NotServableError(
            "flowcut-hf: a FlowCut Qwen-VL variant moves its kept tokens to their positions in the step that embeds "
            "them, on the first pipeline stage only; serve it with --pipeline-parallel-size 1 (tensor parallelism works)."
        )
    multimodal = vllm_config.model_config.multimodal_config
    if multimodal.mm_encoder_tp_mode == "data":
        raise NotServableError("flowcut-hf: a FlowCut Qwen-VL variant runs its ViT sharded; leave --mm-encoder-tp-mode at weights.")
    if multimodal.is_multimodal_pruning_enabled():
        raise NotServableError("flowcut-hf: a FlowCut Qwen-VL variant prunes its videos itself; leave --video-pruning-rate unset.")
    if vllm_config.compilation_config.cudagraph_mm_encoder:
        raise NotServableError("flowcut-hf: a FlowCut Qwen-VL variant's ViT changes length as it prunes; turn cudagraph_mm_encoder off.")


@MULTIMODAL_REGISTRY.register_processor(
    FlowCutQwen2VLMultiModalProcessor, info=processing_info_factory(FlowCutQwen2VLProcessingInfo),
    dummy_inputs=Qwen2VLDummyInputsBuilder,
)
class FlowCutQwen2VLForVllm(FlowCutQwenForVllm, Qwen2VLForConditionalGeneration):
    """vLLM's Qwen2-VL with FlowCut's vision stage for a variant (see :class:`FlowCutQwenForVllm`)."""


@MULTIMODAL_REGISTRY.register_processor(
    FlowCutQwen2_5_VLMultiModalProcessor, info=processing_info_factory(FlowCutQwen2_5_VLProcessingInfo),
    dummy_inputs=Qwen2_5_VLDummyInputsBuilder,
)
class FlowCutQwen2_5_VLForVllm(FlowCutQwenForVllm, Qwen2_5_VLForConditionalGeneration):
    """vLLM's Qwen2.5-VL with FlowCut's vision stage for a variant (see :class:`FlowCutQwenForVllm`)."""

    vit_runner = VllmQwen2_5ViT


__all__ = ["FlowCutQwen2VLForVllm", "FlowCutQwen2_5_VLForVllm", "VllmQwenViT", "VllmQwen2_5ViT", "flowcut_settings_to_serve"]
