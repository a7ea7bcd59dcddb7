"""Qwen2-VL and Qwen2.5-VL with FlowCut visual-token pruning in two stages, as Hugging Face remote code.

1. **Vision stage** (:func:`flowcut_qwen_vision.encode_qwen_vision_with_flowcut`): the ViT's own blocks run
   unchanged; between them FlowCut drops whole 2x2 *merge units*, scored per image (per video frame), until the last
   block, where the cut reaches twice the image's target.
2. **LLM stage** (:class:`FlowCutLLMPruner`, run by :func:`run_layer_groups`): after decoder layer
   ``flowcut_llm_prune_layer`` the last prompt token scores each image's tokens and the image's target stays.
   With ``flowcut_llm_stage=False`` there is none: the vision stage cuts straight to the target (vLLM's schedule).

Kept tokens keep their true (t, h, w) M-RoPE positions, and text keeps the positions stock Qwen gives it, so decoding
continues with the stock positions over a shorter cache. The stock processors are used unchanged; the model replaces
each image's placeholder span by its kept tokens, each at its own unit's placeholder.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from transformers import (
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLModel,
    Qwen2VLForConditionalGeneration,
    Qwen2VLModel,
)
from torch import nn
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling

try:
    from transformers.modeling_outputs import MultimodalBaseModelOutputWithPast, MultimodalCausalLMOutputWithPast
except ImportError:  # transformers < 5.25: the text outputs, without the image and video outputs
    from transformers.modeling_outputs import BaseModelOutputWithPast as MultimodalBaseModelOutputWithPast
    from transformers.modeling_outputs import CausalLMOutputWithPast as MultimodalCausalLMOutputWithPast
from transformers.models.qwen2_5_vl.modeling_qwen2_5_vl import Qwen2_5_VLPreTrainedModel
from transformers.models.qwen2_vl.modeling_qwen2_vl import Qwen2VLPreTrainedModel
from transformers.utils.generic import can_return_tuple

from .configuration_flowcut_qwen2_vl import FlowCutQwen2_5_VLConfig, FlowCutQwen2VLConfig, QWEN_FIELD_VALIDATORS
from .flowcut_compat import build_output, cache_kwargs, cache_of, image_outputs_of, one_cache
from .flowcut_llm_stage import (
    INPUT_POSITION,
    ROPE_POSITION,
    FlowCutLLMPruner,
    LayerGroupsGenerationMixin,
    LayerGroupsState,
    CONTINUE,
    STOCK,
    WHOLE,
    continuation_layout,
    forward_route,
    resolved_use_cache,
    run_layer_groups,
    splice_image_features,
)
from .flowcut_qwen_vision import encode_qwen_vision_with_flowcut, merge_units
from .flowcut_remote_code import RemoteCodeSavingMixin, register_stock_checkpoint_conversion
from .flowcut_settings import FlowCutSettings, configure_flowcut_fields

AUTO_MAP_QWEN2_VL = {
    "AutoConfig": "configuration_flowcut_qwen2_vl.FlowCutQwen2VLConfig",
    "AutoModel": "modeling_flowcut_qwen2_vl.FlowCutQwen2VLModel",
    "AutoModelForImageTextToText": "modeling_flowcut_qwen2_vl.FlowCutQwen2VLForConditionalGeneration",
}
AUTO_MAP_QWEN2_5_VL = {
    "AutoConfig": "configuration_flowcut_qwen2_vl.FlowCutQwen2_5_VLConfig",
    "AutoModel": "modeling_flowcut_qwen2_vl.FlowCutQwen2_5_VLModel",
    "AutoModelForImageTextToText": "modeling_flowcut_qwen2_vl.FlowCutQwen2_5_VLForConditionalGeneration",
}
# The stock Qwen2VLProcessor / Qwen2_5_VLProcessor are used unchanged.
REMOTE_CODE_ENTRY_FILES = ("modeling_flowcut_qwen2_vl.py",)

register_stock_checkpoint_conversion(
    {
        "FlowCutQwen2VLForConditionalGeneration": "Qwen2VLForConditionalGeneration",
        "FlowCutQwen2VLModel": "Qwen2VLModel",
        "FlowCutQwen2_5_VLForConditionalGeneration": "Qwen2VLForConditionalGeneration",
        "FlowCutQwen2_5_VLModel": "Qwen2VLModel",
    }
)

MODALITIES = ("image", "video")


# ------------------------------------------------------------------------------------------------ outputs


@dataclass
class FlowCutQwenVisionOutput(BaseModelOutputWithPooling):
    r"""
    Output of `get_image_features` / `get_video_features` of a FlowCut Qwen model. Every field holds one entry per
    image (or video).

    pooler_output (`list[torch.FloatTensor]`):
        The tokens that enter the language model, `[kept units, text_hidden_size]`, in raster order.
    placeholder_counts (`list[int]`):
        The placeholders the stock processor emits for the image (its merge units).
    kept_units (`list[torch.LongTensor]`):
        Raster indices of the merge units the vision encoder kept (over the `t x h/2 x w/2` unit grid), ascending;
        token `j` of `pooler_output` is unit `kept_units[j]`.
    token_schedule (`list[list[int]]`):
        The image's patch tokens in each vision block.
    llm_targets (`list[int]`):
        The tokens the image keeps after the LLM stage.
    prunable (`list[bool]`):
        False for an image kept whole (its target is all its units): the LLM stage leaves it alone.
    grid_thw (`list[torch.LongTensor]`):
        The image's `(t, h, w)` patch grid.
    """

    placeholder_counts: list[int] | None = None
    kept_units: list[torch.LongTensor] | None = None
    token_schedule: list[list[int]] | None = None
    llm_targets: list[int] | None = None
    prunable: list[bool] | None = None
    grid_thw: list[torch.LongTensor] | None = None


PER_ITEM_FIELDS = ("pooler_output", "placeholder_counts", "kept_units", "token_schedule", "llm_targets", "prunable", "grid_thw")


@dataclass
class FlowCutQwenModelOutputWithPast(MultimodalBaseModelOutputWithPast):
    r"""
    flowcut_state ([`LayerGroupsState`], *optional*):
        The per-layer-group token layout a later forward call (a decoding step) needs; pass it back as
        `flowcut_state=`. `generate()` does so itself. None when nothing was pruned (the forward was the stock one).
    image_kept_units, video_kept_units (`list[torch.LongTensor]`, *optional*):
        Per image (video) of the call, the raster indices of the merge units the layers after the LLM stage see.
    input_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
        For each position of `last_hidden_state`, the input column it comes from, -1 for padding. None when the output
        is aligned with the input.
    """

    image_outputs: FlowCutQwenVisionOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    video_outputs: FlowCutQwenVisionOutput | None = None
    flowcut_state: LayerGroupsState | None = None
    image_kept_units: list[torch.LongTensor] | None = None
    video_kept_units: list[torch.LongTensor] | None = None
    input_positions: torch.LongTensor | None = None


@dataclass
class FlowCutQwenCausalLMOutputWithPast(MultimodalCausalLMOutputWithPast):
    r"""
    flowcut_state, image_kept_units, video_kept_units, input_positions:
        See [`FlowCutQwenModelOutputWithPast`]. `logits` follow `input_positions` (the pruned sequence), and so does
        the loss: `labels` are aligned with the input and gathered the same way.
    """

    image_outputs: FlowCutQwenVisionOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    video_outputs: FlowCutQwenVisionOutput | None = None
    flowcut_state: LayerGroupsState | None = None
    image_kept_units: list[torch.LongTensor] | None = None
    video_kept_units: list[torch.LongTensor] | None = None
    input_positions: torch.LongTensor | None = None


# ------------------------------------------------------------------------------------------------ models


class FlowCutQwenVLModelMixin:
    """FlowCut for a stock ``Qwen2VLModel`` / ``Qwen2_5_VLModel``; :attr:`stock_model_class` names which."""

    stock_model_class: type

    def flowcut_settings(self) -> FlowCutSettings:
        return FlowCutSettings.from_config(self.config, None)

    def pruning_enabled(self) -> bool:
        return self.flowcut_settings().enabled

    def configure_flowcut(
        self,
        retain_ratio: float | None = None,
        target_num: int | None = None,
        enabled: bool | None = None,
        llm_prune_layer: int | None = None,
        llm_stage: bool | None = None,
    ) -> None:
        """Changes the retained amount (a ratio, or a count that wins over it), the LLM pruning layer, whether the LLM
        stage runs and/or switches pruning on or off, on this model. Giving a ratio clears a count set before."""
        configure_flowcut_fields(
            self.config, QWEN_FIELD_VALIDATORS, retain_ratio=retain_ratio, target_num=target_num, enabled=enabled,
            llm_prune_layer=llm_prune_layer, llm_stage=llm_stage,
        )
        if retain_ratio is not None and target_num is None:
            self.config.flowcut_target_num = None

    def check_flowcut_settings(self, settings: FlowCutSettings) -> None:
        if settings.target_num is None and settings.retain_ratio is None:
            raise ValueError("set flowcut_retain_ratio (e.g. 0.111) or flowcut_target_num: neither is set")
        num_layers = self.config.text_config.num_hidden_layers
        if settings.llm_stage and not settings.llm_prune_layer < num_layers - 1:
            raise ValueError(
                f"flowcut_llm_prune_layer={settings.llm_prune_layer} leaves no decoder layer after the LLM stage (the "
                f"language model has {num_layers}); choose 0 to {num_layers - 2} (the paper uses 1)."
            )

    def visual_features(self, pixel_values: torch.Tensor, grid_thw: torch.Tensor, **kwargs) -> FlowCutQwenVisionOutput:
        settings = self.flowcut_settings()
        grid_thw = torch.as_tensor(grid_thw)
        counts = merge_units(grid_thw, self.visual.spatial_merge_size)
        if settings.enabled:
            self.check_flowcut_settings(settings)
            llm_targets = [settings.retained(count) for count in counts]
        else:
            llm_targets = list(counts)
        share = 2 if settings.llm_stage else 1  # the LLM stage halves what the vision encoder keeps
        vision_targets = [min(share * target, count) for target, count in zip(llm_targets, counts)]
        if vision_targets == counts:
            stock = self.visual(pixel_values.type(self.visual.dtype), grid_thw=grid_thw, **kwargs)
            tokens = list(torch.split(stock.pooler_output, counts))
            kept = [torch.arange(count, device=stock.pooler_output.device) for count in counts]
            patches_per_unit = self.visual.spatial_merge_size**2
            schedule = [[count * patches_per_unit] * len(self.visual.blocks) for count in counts]
        else:
            result = encode_qwen_vision_with_flowcut(self.visual, pixel_values, grid_thw, vision_targets, settings)
            tokens, kept, schedule = result.tokens, result.kept_units, result.token_schedule
        return FlowCutQwenVisionOutput(
            pooler_output=tokens,
            placeholder_counts=counts,
            kept_units=kept,
            token_schedule=schedule,
            llm_targets=llm_targets,
            prunable=[target < count for target, count in zip(llm_targets, counts)],
            grid_thw=list(grid_thw),
        )

    @can_return_tuple
    def get_image_features(self, pixel_values: torch.Tensor, image_grid_thw: torch.LongTensor | None = None, **kwargs):
        kwargs.pop("return_dict", None)
        return self.visual_features(pixel_values, image_grid_thw, **kwargs)

    @can_return_tuple
    def get_video_features(
        self, pixel_values_videos: torch.Tensor, video_grid_thw: torch.LongTensor | None = None, **kwargs
    ):
        kwargs.pop("return_dict", None)
        return self.visual_features(pixel_values_videos, video_grid_thw, **kwargs)

    def stock_forward(self, mm_encoder_outputs, second_per_grid_ts, **kwargs):
        if second_per_grid_ts is not None:
            kwargs["second_per_grid_ts"] = second_per_grid_ts
        return self.stock_model_class.forward(self, mm_encoder_outputs=mm_encoder_outputs, **kwargs)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutQwenModelOutputWithPast:
        r"""
        flowcut_state ([`LayerGroupsState`], *optional*):
            The `flowcut_state` of the previous call's output, when continuing from its `cache` (decoding
            steps; `generate()` passes it). Positions are the stock ones: pass `position_ids` as `generate()` does,
            or none, and the next positions follow the prompt's.
        """
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        settings = self.flowcut_settings()
        stock_kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            **kwargs,
        )
        outputs = {}
        if settings.enabled:
            outputs = dict(mm_encoder_outputs or {})
            if outputs.get("image") is None and pixel_values is not None:
                outputs["image"] = self.get_image_features(pixel_values, image_grid_thw, return_dict=True)
            if outputs.get("video") is None and pixel_values_videos is not None:
                outputs["video"] = self.get_video_features(pixel_values_videos, video_grid_thw, return_dict=True)
            outputs = {name: output for name, output in outputs.items() if output is not None}
        new_tokens = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        route = forward_route(settings.enabled, flowcut_state, outputs, cache, new_tokens, attention_mask)
        if route == STOCK:
            return self.stock_forward(
                mm_encoder_outputs, second_per_grid_ts, pixel_values=pixel_values,
                pixel_values_videos=pixel_values_videos, **stock_kwargs,
            )
        if route == CONTINUE:
            return self.continue_pruned_sequence(
                input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, flowcut_state, kwargs
            )
        if route == WHOLE:
            output = self.stock_forward(outputs or None, second_per_grid_ts, **stock_kwargs)
            if not outputs:
                return output
            return build_output(
                FlowCutQwenModelOutputWithPast,
                **output,
                image_kept_units=outputs["image"].kept_units if "image" in outputs else None,
                video_kept_units=outputs["video"].kept_units if "video" in outputs else None,
            )
        return self.prefill_pruned_sequence(
            input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, outputs,
            mm_token_type_ids, second_per_grid_ts, flowcut_state, settings, kwargs,
        )

    def stock_positions(
        self, input_ids, inputs_embeds, attention_mask, position_ids, outputs, mm_token_type_ids, second_per_grid_ts
    ) -> torch.Tensor:
        """``[batch, length, 3]``: the M-RoPE positions stock Qwen gives the unpruned input."""
        if position_ids is None:
            grids = {
                f"{name}_grid_thw": torch.stack(output.grid_thw) if output.grid_thw else None
                for name, output in outputs.items()
            }
            extra = {"second_per_grid_ts": second_per_grid_ts} if second_per_grid_ts is not None else {}
            if input_ids is None or mm_token_type_ids is None:
                raise ValueError(
                    "FlowCut on Qwen needs the stock M-RoPE positions of the unpruned prompt: pass input_ids with the "
                    "mm_token_type_ids the processor returns (or position_ids)."
                )
            position_ids, _ = self.get_rope_index(
                input_ids, mm_token_type_ids=mm_token_type_ids, attention_mask=attention_mask, **grids, **extra
            )
        if position_ids.ndim == 3 and position_ids.shape[0] == 4:
            position_ids = position_ids[1:]  # generate() prepends the text positions
        elif position_ids.ndim == 2:
            position_ids = position_ids[None].expand(3, -1, -1)
        return position_ids.permute(1, 2, 0).to(inputs_embeds.device)

    def prefill_pruned_sequence(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, outputs,
        mm_token_type_ids, second_per_grid_ts, flowcut_state, settings, kwargs,
    ) -> FlowCutQwenModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        placeholders, items = self.items_in_order(input_ids, inputs_embeds, outputs)
        positions = self.stock_positions(
            input_ids, inputs_embeds, attention_mask, position_ids, outputs, mm_token_type_ids, second_per_grid_ts
        )
        prompt_length = flowcut_state.prompt_length if flowcut_state is not None else inputs_embeds.shape[1]
        layout = splice_image_features(
            inputs_embeds,
            placeholders,
            attention_mask,
            [outputs[name].pooler_output[index] for name, index in items],
            [outputs[name].placeholder_counts[index] for name, index in items],
            [outputs[name].prunable[index] for name, index in items],
            prompt_length=prompt_length,
            kept_offsets=[outputs[name].kept_units[index] for name, index in items],
        )
        columns = layout.info[INPUT_POSITION].to(positions.device)
        rope = positions.gather(1, columns.clamp(min=0).unsqueeze(-1).expand(-1, -1, positions.shape[-1]))
        layout.info[ROPE_POSITION] = rope.masked_fill((columns < 0).unsqueeze(-1), 0)

        use_cache = resolved_use_cache(self, self.config.text_config, use_cache)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        targets = {order: outputs[name].llm_targets[index] for order, (name, index) in enumerate(items)}
        pruner = FlowCutLLMPruner(settings.llm_prune_layer, target_num=0, image_targets=targets) if settings.llm_stage else None
        output = run_layer_groups(
            self.language_model,
            layout,
            pruner.group_starts if pruner is not None else (0,),
            past_state=None,
            cache=cache,
            use_cache=use_cache,
            dropper=pruner,
            prompt_length=prompt_length,
            **kwargs,
        )
        kept_units: dict[str, list] = {name: [None] * len(output_.placeholder_counts) for name, output_ in outputs.items()}
        for order, (name, index) in enumerate(items):
            vision_kept = outputs[name].kept_units[index]
            llm_keep = pruner.keep_indices.get(order) if pruner is not None else None
            kept_units[name][index] = vision_kept if llm_keep is None else vision_kept[llm_keep.to(vision_kept.device)]
        return build_output(
            FlowCutQwenModelOutputWithPast,
            last_hidden_state=output.last_hidden_state,
            cache=cache_of(output),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            image_outputs=outputs.get("image"),
            video_outputs=outputs.get("video"),
            flowcut_state=output.state,
            image_kept_units=kept_units.get("image"),
            video_kept_units=kept_units.get("video"),
            input_positions=output.token_info[INPUT_POSITION],
        )

    def items_in_order(self, input_ids, inputs_embeds, outputs) -> tuple[torch.Tensor, list[tuple[str, int]]]:
        """The placeholder mask of every image and video, and the items ``(modality, index)`` in the order their
        spans appear in the batch (row by row), which is the order :func:`splice_image_features` fills them in."""
        masks, starts = [], []
        for name in MODALITIES:
            token_id = getattr(self.config, f"{name}_token_id")
            if input_ids is not None:
                mask = input_ids == token_id
            else:
                embedding = self.get_input_embeddings()(torch.tensor(token_id, device=inputs_embeds.device))
                mask = (inputs_embeds == embedding).all(-1)
            masks.append(mask)
            output = outputs.get(name)
            counts = list(output.placeholder_counts) if output is not None else []
            found = int(mask.sum())
            if found != sum(counts):
                raise ValueError(
                    f"The input holds {found} {name} placeholder tokens, but its {len(counts)} {name}(s) need "
                    f"{sum(counts)} ({counts} per {name}, the stock count for their grids). Build the inputs with the "
                    "stock processor of this repo (AutoProcessor.from_pretrained(<repo>)) from the same images/videos."
                )
            flat = mask.flatten().nonzero().squeeze(-1)
            span_starts = torch.tensor([0, *counts[:-1]], dtype=torch.long).cumsum(0).tolist() if counts else []
            starts.extend((int(flat[start]), name, index) for index, start in enumerate(span_starts))
        items = [(name, index) for _, name, index in sorted(starts)]
        return masks[0] | masks[1], items

    def continue_pruned_sequence(
        self, input_ids, inputs_embeds, attention_mask, position_ids, cache, use_cache, flowcut_state, kwargs
    ) -> FlowCutQwenModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        rope_positions = None
        if position_ids is not None:
            if position_ids.ndim == 3 and position_ids.shape[0] == 4:
                position_ids = position_ids[1:]
            elif position_ids.ndim == 2:
                position_ids = position_ids[None].expand(3, -1, -1)
            rope_positions = position_ids.permute(1, 2, 0)
        output = run_layer_groups(
            self.language_model,
            continuation_layout(inputs_embeds, attention_mask, rope_positions),
            flowcut_state.group_starts,
            past_state=flowcut_state,
            cache=cache,
            use_cache=resolved_use_cache(self, self.config.text_config, use_cache),
            **kwargs,
        )
        return build_output(
            FlowCutQwenModelOutputWithPast,
            last_hidden_state=output.last_hidden_state,
            cache=cache_of(output),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            flowcut_state=output.state,
            input_positions=output.token_info[INPUT_POSITION],
        )


class FlowCutQwen2VLModel(FlowCutQwenVLModelMixin, Qwen2VLModel):
    """[`Qwen2VLModel`] that prunes visual tokens in the ViT (whole 2x2 merge units) and inside the language model."""

    config_class = FlowCutQwen2VLConfig
    stock_model_class = Qwen2VLModel


class FlowCutQwen2_5_VLModel(FlowCutQwenVLModelMixin, Qwen2_5_VLModel):
    """[`Qwen2_5_VLModel`] that prunes visual tokens in the ViT (whole 2x2 merge units, window attention kept) and
    inside the language model."""

    config_class = FlowCutQwen2_5_VLConfig
    stock_model_class = Qwen2_5_VLModel


class FlowCutQwenForConditionalGenerationMixin(LayerGroupsGenerationMixin, RemoteCodeSavingMixin):
    """The conditional-generation side shared by both Qwen versions: loss on the pruned sequence, generate()."""

    inner_model_class: type

    def configure_flowcut(
        self,
        retain_ratio: float | None = None,
        target_num: int | None = None,
        enabled: bool | None = None,
        llm_prune_layer: int | None = None,
        llm_stage: bool | None = None,
    ) -> None:
        """See [`FlowCutQwenVLModelMixin.configure_flowcut`]; the stock processor needs no change."""
        self.model.configure_flowcut(
            retain_ratio=retain_ratio, target_num=target_num, enabled=enabled, llm_prune_layer=llm_prune_layer,
            llm_stage=llm_stage,
        )

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        pixel_values: torch.Tensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_grid_thw: torch.LongTensor | None = None,
        video_grid_thw: torch.LongTensor | None = None,
        mm_token_type_ids: torch.IntTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        second_per_grid_ts: torch.Tensor | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutQwenCausalLMOutputWithPast:
        r"""
        flowcut_state ([`LayerGroupsState`], *optional*):
            See [`FlowCutQwenVLModelMixin.forward`].
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Aligned with `input_ids`, as for the stock model; when tokens are pruned they are gathered with the
            sequence (see `input_positions` in the output), so the loss is that of the pruned sequence.
        """
        cache = one_cache(cache, past_key_values)
        outputs = self.model(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            pixel_values=pixel_values,
            pixel_values_videos=pixel_values_videos,
            image_grid_thw=image_grid_thw,
            video_grid_thw=video_grid_thw,
            mm_token_type_ids=mm_token_type_ids,
            mm_encoder_outputs=mm_encoder_outputs,
            second_per_grid_ts=second_per_grid_ts,
            flowcut_state=flowcut_state,
            return_dict=True,
            **kwargs,
        )
        logits, loss = self.logits_and_loss(outputs, labels, logits_to_keep, **kwargs)
        return build_output(
            FlowCutQwenCausalLMOutputWithPast,
            loss=loss,
            logits=logits,
            cache=cache_of(outputs),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs_of(outputs),
            video_outputs=getattr(outputs, "video_outputs", None),
            flowcut_state=getattr(outputs, "flowcut_state", None),
            image_kept_units=getattr(outputs, "image_kept_units", None),
            video_kept_units=getattr(outputs, "video_kept_units", None),
            input_positions=getattr(outputs, "input_positions", None),
        )

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        # The stock helper matches placeholder counts with feature lengths, which differ once tokens are pruned;
        # the placeholder counts say which images belong to which prompt.
        if not any(getattr(o, "placeholder_counts", None) is not None for o in mm_encoder_output.values()):
            return super()._expand_multimodal_outputs(
                input_ids, mm_encoder_output, expand_size=expand_size, inputs_embeds=inputs_embeds
            )
        placeholders = self.model.items_in_order(input_ids, inputs_embeds, mm_encoder_output)[0]
        for name, output in mm_encoder_output.items():
            token_id = getattr(self.config, f"{name}_token_id")
            per_prompt_mask = input_ids == token_id if input_ids is not None and input_ids.numel() else placeholders
            per_prompt = torch.cumsum(per_prompt_mask.sum(-1), 0).tolist()
            per_item = torch.tensor(output.placeholder_counts, dtype=torch.long).cumsum(0).tolist()
            offsets = [0] + [i + 1 for i, total in enumerate(per_item) if total in per_prompt]
            for field in PER_ITEM_FIELDS:
                values = list(getattr(output, field))
                setattr(
                    output,
                    field,
                    [value for start, end in zip(offsets[:-1], offsets[1:]) for value in values[start:end] * expand_size],
                )
        return mm_encoder_output


class FlowCutQwen2VLForConditionalGeneration(FlowCutQwenForConditionalGenerationMixin, Qwen2VLForConditionalGeneration):
    """[`Qwen2VLForConditionalGeneration`] that prunes visual tokens with FlowCut (see [`FlowCutQwen2VLModel`])."""

    config_class = FlowCutQwen2VLConfig
    _auto_class = "AutoModelForImageTextToText"
    flowcut_auto_map = AUTO_MAP_QWEN2_VL
    flowcut_remote_code_entry_files = REMOTE_CODE_ENTRY_FILES

    def __init__(self, config: FlowCutQwen2VLConfig):
        # Not super().__init__: it would build (and initialise) a stock model only to throw it away.
        Qwen2VLPreTrainedModel.__init__(self, config)
        self.model = FlowCutQwen2VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


class FlowCutQwen2_5_VLForConditionalGeneration(
    FlowCutQwenForConditionalGenerationMixin, Qwen2_5_VLForConditionalGeneration
):
    """[`Qwen2_5_VLForConditionalGeneration`] that prunes visual tokens with FlowCut (see
    [`FlowCutQwen2_5_VLModel`])."""

    config_class = FlowCutQwen2_5_VLConfig
    _auto_class = "AutoModelForImageTextToText"
    flowcut_auto_map = AUTO_MAP_QWEN2_5_VL
    flowcut_remote_code_entry_files = REMOTE_CODE_ENTRY_FILES

    def __init__(self, config: FlowCutQwen2_5_VLConfig):
        # Not super().__init__: it would build (and initialise) a stock model only to throw it away.
        Qwen2_5_VLPreTrainedModel.__init__(self, config)
        self.model = FlowCutQwen2_5_VLModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()


__all__ = [
    "AUTO_MAP_QWEN2_5_VL",
    "AUTO_MAP_QWEN2_VL",
    "FlowCutQwen2VLForConditionalGeneration",
    "FlowCutQwen2VLModel",
    "FlowCutQwen2_5_VLForConditionalGeneration",
    "FlowCutQwen2_5_VLModel",
    "FlowCutQwenCausalLMOutputWithPast",
    "FlowCutQwenModelOutputWithPast",
    "FlowCutQwenVisionOutput",
]
