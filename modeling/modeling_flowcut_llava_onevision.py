"""LLaVA-OneVision with VFlowOpt (or FlowCut) visual-token pruning, as Hugging Face remote code.

``config.pruning_method`` chooses the method; VFlowOpt, the paper's model, is the default:

1. **Importance map** (:meth:`FlowCutLlavaOnevisionModel.get_image_features`): the SigLIP tower runs unchanged; the
   q/k projections of the layer whose output is the image feature are read with hooks, and each crop's map is the
   attention its patches receive from the relatively important patches (:func:`vflowopt_core.importance_map`). The
   crop maps are packed exactly as the features are, by the stock ``pack_image_features`` itself: base crop, the
   unpadded and interpolated grid, and a newline column whose importance is 1.0.
2. **Stage 0**: after the projector, each image keeps ``vflowopt_vision_keep`` of its packed tokens, the dropped ones
   of each spatial cell recycled into one importance-weighted token (:func:`vflowopt_core.recycle_stage0`).
3. **LLM stages**: before each layer of ``vflowopt_llm_layers`` an image keeps its share of its then-current tokens by
   their carried importance (:class:`vflowopt_core.ImportanceDropper`), the survivors at their positions.

Each image is pruned on its own, so a row of a batch gives what it gives alone. The stock processor is used
unchanged: the model replaces each image's placeholder span by its kept tokens; positions are contiguous over the
sequence after stage 0, as in the authors' code, and then stay with each token.

**FlowCut** (``pruning_method="flowcut"``) runs as on LLaVA-NeXT, with SigLIP's missing CLS handled as on Qwen2-VL:
every crop of an image goes through the vision tower with progressive pruning to ``flowcut_target_num // 2`` patches
(the global query is the mean of the patches' queries; a patch scores its attention times the L1 norm of its value),
the kept tokens are laid out in the stock packed order (base crop, then the unpadded grid, without the newline column
and without the anyres_max interpolation, which pruning makes moot; a one-crop image keeps its newline), and after
decoder layer ``flowcut_llm_prune_layer`` the last prompt token keeps ``flowcut_target_num`` of them.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_onevision.modeling_llava_onevision import (
    LlavaOnevisionCausalLMOutputWithPast,
    LlavaOnevisionModelOutputWithPast,
    LlavaOnevisionPreTrainedModel,
    image_size_to_num_patches,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_flowcut_llava_onevision import ONEVISION_FIELD_VALIDATORS, FlowCutLlavaOnevisionConfig
from .flowcut_core import FlowCutSelector, mean_query_signals, record_module_outputs
from .flowcut_compat import build_output, cache_kwargs, cache_of, image_outputs_of, one_cache
from .flowcut_llm_stage import (
    CONTINUE,
    FlowCutLLMPruner,
    INPUT_POSITION,
    STOCK,
    WHOLE,
    LayerGroupsGenerationMixin,
    LayerGroupsState,
    check_placeholder_counts,
    continue_layer_groups,
    forward_route,
    placeholder_positions,
    resolved_use_cache,
    run_layer_groups,
    splice_image_features,
)
from .flowcut_remote_code import RemoteCodeSavingMixin, register_stock_checkpoint_conversion
from .flowcut_settings import FlowCutSettings, configure_flowcut_fields
from .vflowopt_core import (
    combine_importance,
    configure_vflowopt_fields,
    crop_entropies,
    map_layer_index,
    run_with_importance_maps,
    stage0_images,
    vflowopt_prefill,
    vflowopt_running,
    vflowopt_settings,
)

AUTO_MAP = {
    "AutoConfig": "configuration_flowcut_llava_onevision.FlowCutLlavaOnevisionConfig",
    "AutoModel": "modeling_flowcut_llava_onevision.FlowCutLlavaOnevisionModel",
    "AutoModelForImageTextToText": "modeling_flowcut_llava_onevision.FlowCutLlavaOnevisionForConditionalGeneration",
}
REMOTE_CODE_ENTRY_FILES = ("modeling_flowcut_llava_onevision.py",)

register_stock_checkpoint_conversion(
    {"FlowCutLlavaOnevisionForConditionalGeneration": "llava_onevision", "FlowCutLlavaOnevisionModel": "LlavaOnevisionModel"}
)

SIGLIP_MEAN = SIGLIP_STD = (0.5, 0.5, 0.5)  # LLaVA-OneVision's image normalisation, for the entropy term


@dataclass
class FlowCutOnevisionImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    Output of `FlowCutLlavaOnevisionModel.get_image_features`. Every field holds one entry per image.

    pooler_output (`list[torch.FloatTensor]`):
        The tokens that enter the language model after stage 0, `[kept, text_hidden_size]`.
    placeholder_counts (`list[int]`):
        The image's stock packed token count (its placeholders from the stock processor).
    kept_positions (`list[torch.LongTensor]`):
        Ascending positions, among the image's packed tokens, of the tokens that entered the language model.
    recycled_positions (`list[torch.LongTensor]`):
        Those of them that hold a recycled token (a cell's dropped tokens, averaged by importance).
    importance (`list[torch.FloatTensor]`):
        The importance of each packed token (`[placeholder_count]`; newline tokens 1.0).
    prunable (`list[bool]`):
        Whether the LLM stages may drop the image's tokens (VFlowOpt: always; FlowCut: unless the image has at most
        `flowcut_target_num` tokens and is kept whole).
    keep_indices, token_schedule (`list`):
        FlowCut only (`kept_positions`, `recycled_positions` and `importance` are then None): `[crops, kept]` patch
        indices each crop kept in the vision tower, and the sequence length each vision layer ran on.
    """

    placeholder_counts: list[int] | None = None
    kept_positions: list[torch.LongTensor] | None = None
    recycled_positions: list[torch.LongTensor] | None = None
    importance: list[torch.FloatTensor] | None = None
    prunable: list[bool] | None = None
    keep_indices: list[torch.LongTensor] | None = None
    token_schedule: list[list[int]] | None = None


PER_IMAGE_FIELDS = (
    "pooler_output", "placeholder_counts", "kept_positions", "recycled_positions", "importance", "prunable",
    "keep_indices", "token_schedule",
)


def encode_siglip_with_flowcut(
    vision_tower: nn.Module, pixel_values: torch.Tensor, feature_layer: int, target_patches: int, settings: FlowCutSettings
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """One image's crops ``[crops, channels, height, width]`` through a SigLIP tower up to ``feature_layer`` with
    FlowCut's progressive pruning to ``target_patches`` per crop (the crops share each layer's prune count, as LLaVA-NeXT's
    do). SigLIP has no CLS: the global query is the mean of the patches' own queries, per crop. Returns the feature
    layer's hidden states ``[crops, kept, hidden]``, the kept patch indices ``[crops, kept]`` (ascending) and the
    sequence length each layer ran on."""
    vision_model = getattr(vision_tower, "vision_model", vision_tower)
    hidden_states = vision_model.embeddings(pixel_values)
    crops, patches, _ = hidden_states.shape
    selector = FlowCutSelector(
        target_length=target_patches, last_layer=feature_layer, batch_size=crops, num_patches=patches,
        device=hidden_states.device, prune_interval=settings.prune_interval, history_weight=settings.history_weight,
        num_prefix_tokens=0,
    )
    for layer_idx, layer in enumerate(vision_model.encoder.layers[: feature_layer + 1]):
        selector.record_layer(hidden_states.shape[1])
        if not selector.active:
            hidden_states = layer(hidden_states, None)
            continue
        attention = layer.self_attn
        with record_module_outputs(attention.q_proj, attention.k_proj, attention.v_proj) as captured:
            hidden_states = layer(hidden_states, None)
        queries, keys, values = captured
        length, heads = hidden_states.shape[1], attention.num_heads
        with torch.no_grad():
            signals = [
                mean_query_signals(
                    queries[crop].view(length, heads, -1), keys[crop].view(length, heads, -1),
                    values[crop].view(length, heads, -1), attention.scale,
                )
                for crop in range(crops)
            ]
            global_attention = torch.stack([weights for weights, _ in signals])
            score = global_attention * torch.stack([value_l1 for _, value_l1 in signals])
        kept = selector.step(layer_idx, score, global_attention)
        if kept is not None:
            index = kept.to(hidden_states.device)[..., None].expand(-1, -1, hidden_states.shape[-1])
            hidden_states = hidden_states.gather(1, index)
    return hidden_states, selector.keep_indices, selector.sequence_lengths


@dataclass
class FlowCutOnevisionModelOutputWithPast(LlavaOnevisionModelOutputWithPast):
    r"""
    flowcut_state ([`LayerGroupsState`], *optional*):
        The per-layer-group token layout a later forward call (a decoding step) needs; `generate()` passes it back.
    input_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
        For each position of `last_hidden_state`, the input column it comes from, -1 for padding.
    """

    image_outputs: FlowCutOnevisionImageFeaturesOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    flowcut_state: LayerGroupsState | None = None
    input_positions: torch.LongTensor | None = None


@dataclass
class FlowCutOnevisionCausalLMOutputWithPast(LlavaOnevisionCausalLMOutputWithPast):
    r"""
    flowcut_state, input_positions:
        See [`FlowCutOnevisionModelOutputWithPast`]; `logits` and the loss follow the pruned sequence.
    """

    image_outputs: FlowCutOnevisionImageFeaturesOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    flowcut_state: LayerGroupsState | None = None
    input_positions: torch.LongTensor | None = None


class FlowCutLlavaOnevisionModel(LlavaOnevisionModel):
    """[`LlavaOnevisionModel`] that prunes visual tokens with VFlowOpt after the projector and inside the LLM."""

    config_class = FlowCutLlavaOnevisionConfig

    def pruning_enabled(self) -> bool:
        if getattr(self.config, "pruning_method", "vflowopt") == "flowcut":
            return self.flowcut_settings().enabled
        return vflowopt_running(self.config)

    def flowcut_settings(self) -> FlowCutSettings:
        return FlowCutSettings.from_config(self.config, self.config.flowcut_target_num)

    def configure_flowcut(
        self, target_num: int | None = None, enabled: bool | None = None, llm_prune_layer: int | None = None
    ) -> None:
        """Changes FlowCut's retained count, LLM pruning layer and/or switches it on or off, on this model."""
        configure_flowcut_fields(
            self.config, ONEVISION_FIELD_VALIDATORS, target_num=target_num, enabled=enabled, llm_prune_layer=llm_prune_layer
        )

    def configure_vflowopt(self, enabled: bool | None = None, **settings) -> None:
        """Changes VFlowOpt settings (short names: ``vision_keep``, ``threshold``, ``llm_keeps``, ...) or switches
        pruning on or off; all values are checked, together, before any is changed."""
        configure_vflowopt_fields(self.config, ONEVISION_FIELD_VALIDATORS, enabled=enabled, **settings)

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        **kwargs,
    ) -> FlowCutOnevisionImageFeaturesOutput:
        stock_kwargs = dict(
            vision_feature_layer=vision_feature_layer, vision_feature_select_strategy=vision_feature_select_strategy,
            vision_aspect_ratio=vision_aspect_ratio, batch_num_images=batch_num_images, return_dict=True, **kwargs,
        )
        if not self.pruning_enabled():
            # The stock forward calls this method too: with pruning off it must give the stock features.
            return LlavaOnevisionModel.get_image_features(self, pixel_values, image_sizes, **stock_kwargs)
        if self.config.pruning_method == "flowcut":
            return self.flowcut_image_features(pixel_values, image_sizes, stock_kwargs)
        settings = vflowopt_settings(self.config)
        if vision_feature_select_strategy != "full":
            raise ValueError(
                f"VFlowOpt on LLaVA-OneVision needs vision_feature_select_strategy='full' (SigLIP has no CLS), got "
                f"{vision_feature_select_strategy!r}; set vflowopt_enabled=False to run this model unpruned."
            )
        stock, maps = run_with_importance_maps(
            self.vision_tower, vision_feature_layer, settings.threshold,
            lambda: LlavaOnevisionModel.get_image_features(self, pixel_values, image_sizes, **stock_kwargs),
        )
        side = self.config.vision_config.image_size // self.config.vision_config.patch_size
        with torch.no_grad():
            if settings.entropy_weight:
                crop_pixels = self.crop_pixels(pixel_values, image_sizes, batch_num_images)
                entropy = crop_entropies(crop_pixels, self.config.vision_config.patch_size, SIGLIP_MEAN, SIGLIP_STD)
                maps = combine_importance(maps, entropy.to(maps.device), settings.entropy_weight)
            per_image = torch.split(maps, self.crops_per_image(image_sizes, batch_num_images))
            newline = torch.ones(1, device=maps.device)
            packed_maps, _ = self.pack_image_features(
                [m[..., None] for m in per_image], image_sizes, image_newline=newline, vision_aspect_ratio=vision_aspect_ratio
            )
            marked, _ = self.pack_image_features(
                [torch.zeros_like(m[..., None]) for m in per_image], image_sizes, image_newline=newline,
                vision_aspect_ratio=vision_aspect_ratio,
            )
        stage0 = stage0_images(
            stock.pooler_output, [m[:, 0] for m in packed_maps], [m[:, 0] > 0 for m in marked],
            [len(m) for m in per_image], side, settings,
        )
        return FlowCutOnevisionImageFeaturesOutput(**vars(stage0))

    def flowcut_image_features(self, pixel_values, image_sizes, stock_kwargs: dict) -> FlowCutOnevisionImageFeaturesOutput:
        """FlowCut's vision stage, image by image; an image with at most ``flowcut_target_num`` stock tokens stays whole."""
        settings = self.flowcut_settings()
        if stock_kwargs["vision_feature_select_strategy"] != "full":
            raise ValueError(
                "FlowCut on LLaVA-OneVision needs vision_feature_select_strategy='full' (SigLIP has no CLS), got "
                f"{stock_kwargs['vision_feature_select_strategy']!r}; set flowcut_enabled=False to run it unpruned."
            )
        vision = self.config.vision_config
        patches = (vision.image_size // vision.patch_size) ** 2
        feature_layer = map_layer_index(stock_kwargs["vision_feature_layer"], vision.num_hidden_layers)
        crop_counts = self.crops_per_image(image_sizes, stock_kwargs["batch_num_images"])
        crop_pixels = torch.split(self.crop_pixels(pixel_values, image_sizes, stock_kwargs["batch_num_images"]), crop_counts)
        aspect_ratio = stock_kwargs["vision_aspect_ratio"]
        fields = {name: [] for name in PER_IMAGE_FIELDS}
        for image, (pixels, size) in enumerate(zip(crop_pixels, image_sizes)):
            sources = torch.arange(len(pixels) * patches, dtype=torch.float32, device=pixels.device).view(len(pixels), patches, 1)
            newline = torch.full((1,), -1.0, device=pixels.device)
            (stock_layout,), _ = self.pack_image_features([sources], size[None], image_newline=newline, vision_aspect_ratio=aspect_ratio)
            count = len(stock_layout)
            if count <= settings.target_num:
                whole = LlavaOnevisionModel.get_image_features(
                    self, pixels, size[None], **{**stock_kwargs, "batch_num_images": None}
                )
                entry = {"pooler_output": whole.pooler_output[0], "prunable": False,
                         "keep_indices": torch.arange(patches, device=pixels.device).expand(len(pixels), -1),
                         "token_schedule": [patches] * (feature_layer + 1)}
            else:
                hidden, keep, schedule = encode_siglip_with_flowcut(
                    self.vision_tower, pixels.to(self.vision_tower.dtype), feature_layer, settings.target_num // 2, settings
                )
                # The stock packed order without interpolation or newlines: a permutation of the crops' patches.
                (order,), _ = self.pack_image_features([sources], size[None], vision_aspect_ratio="anyres_max_1000000")
                row_of = torch.full((len(pixels) * patches,), -1, dtype=torch.long, device=keep.device)
                crop_ids = torch.arange(len(pixels), device=keep.device)[:, None]
                row_of[(crop_ids * patches + keep).flatten()] = torch.arange(keep.numel(), device=keep.device)
                rows = row_of[order[:, 0].long().to(keep.device)]
                tokens = self.multi_modal_projector(hidden).flatten(0, 1)[rows[rows >= 0].to(hidden.device)]
                if len(pixels) == 1:
                    tokens = torch.cat([tokens, self.image_newline[None].to(tokens.dtype)])
                entry = {"pooler_output": tokens, "prunable": True, "keep_indices": keep, "token_schedule": schedule}
            entry["placeholder_counts"] = count
            for name, value in entry.items():
                fields[name].append(value)
        return FlowCutOnevisionImageFeaturesOutput(**{name: values or None for name, values in fields.items()})

    def crops_per_image(self, image_sizes, batch_num_images) -> list[int]:
        need_patching = (
            [True] * len(image_sizes) if batch_num_images is None else [n == 1 for n in batch_num_images for _ in range(n)]
        )
        return [
            image_size_to_num_patches(size, self.config.image_grid_pinpoints, self.config.vision_config.image_size)
            if patch else 1
            for size, patch in zip(image_sizes, need_patching)
        ]

    def crop_pixels(self, pixel_values, image_sizes, batch_num_images) -> torch.Tensor:
        if pixel_values.dim() == 5:
            counts = self.crops_per_image(image_sizes, batch_num_images)
            return torch.cat([pixels[:count] for pixels, count in zip(pixel_values, counts)])
        return pixel_values

    @merge_with_config_defaults
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_sizes_videos: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutOnevisionModelOutputWithPast:
        r"""
        flowcut_state ([`LayerGroupsState`], *optional*):
            The `flowcut_state` of the previous call's output, when continuing from its `cache` (decoding
            steps; `generate()` passes it). Positions then continue from the pruned prompt's.
        """
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values_videos is not None and self.pruning_enabled():
            raise ValueError("VFlowOpt on LLaVA-OneVision prunes images; set vflowopt_enabled=False to run videos.")
        stock_kwargs = dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids,
            **cache_kwargs(cache), inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images, use_cache=use_cache, **kwargs,
        )
        image_output = None
        if self.pruning_enabled():
            image_output = (mm_encoder_outputs or {}).get("image")
            if image_output is None and pixel_values is not None and pixel_values.size(0) > 0:
                image_output = self.get_image_features(
                    pixel_values, image_sizes, vision_feature_layer=vision_feature_layer,
                    vision_feature_select_strategy=vision_feature_select_strategy,
                    vision_aspect_ratio=vision_aspect_ratio, batch_num_images=batch_num_images, return_dict=True,
                )
        outputs = {"image": image_output} if image_output is not None else {}
        new_tokens = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        route = forward_route(self.pruning_enabled(), flowcut_state, outputs, cache, new_tokens, attention_mask)
        if route == STOCK:
            return LlavaOnevisionModel.forward(
                self, pixel_values=pixel_values, image_sizes=image_sizes, pixel_values_videos=pixel_values_videos,
                image_sizes_videos=image_sizes_videos, mm_encoder_outputs=mm_encoder_outputs, **stock_kwargs,
            )
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        if route == CONTINUE:
            output = continue_layer_groups(
                self.language_model, inputs_embeds, attention_mask, flowcut_state, cache,
                resolved_use_cache(self, self.config.text_config, use_cache), **kwargs,
            )
            return self.pruned_output(output, None)
        if route == WHOLE:
            return LlavaOnevisionModel.forward(self, mm_encoder_outputs=outputs or None, **stock_kwargs)
        return self.prefill_pruned_sequence(
            input_ids, inputs_embeds, attention_mask, cache, use_cache, image_output, flowcut_state, kwargs
        )

    def prefill_pruned_sequence(
        self, input_ids, inputs_embeds, attention_mask, cache, use_cache, image_output, flowcut_state, kwargs
    ) -> FlowCutOnevisionModelOutputWithPast:
        placeholders = self.placeholder_mask(input_ids, inputs_embeds)
        check_placeholder_counts(
            placeholders, image_output.placeholder_counts,
            "Build the inputs with the stock LlavaOnevisionProcessor of this repo from the same images.",
        )
        use_cache = resolved_use_cache(self, self.config.text_config, use_cache)
        prompt_length = flowcut_state.prompt_length if flowcut_state is not None else inputs_embeds.shape[1]
        if self.config.pruning_method == "vflowopt":
            output = vflowopt_prefill(
                self.language_model, self.config, inputs_embeds, placeholders, attention_mask, image_output,
                vflowopt_settings(self.config), cache, use_cache, prompt_length, **kwargs,
            )
            return self.pruned_output(output, image_output)
        # FlowCut: the kept tokens fill each span from its start; positions are compacted, as on LLaVA-NeXT.
        settings = self.flowcut_settings()
        layout = splice_image_features(
            inputs_embeds, placeholders, attention_mask, image_output.pooler_output, image_output.placeholder_counts,
            image_output.prunable, prompt_length=prompt_length,
        )
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        pruner = FlowCutLLMPruner(settings.llm_prune_layer, settings.target_num)
        output = run_layer_groups(
            self.language_model, layout, pruner.group_starts, past_state=None, cache=cache, use_cache=use_cache,
            dropper=pruner, prompt_length=prompt_length, **kwargs,
        )
        return self.pruned_output(output, image_output)

    def placeholder_mask(self, input_ids, inputs_embeds) -> torch.Tensor:
        return placeholder_positions(self.get_input_embeddings(), self.config.image_token_id, input_ids, inputs_embeds)

    @staticmethod
    def pruned_output(output, image_output) -> FlowCutOnevisionModelOutputWithPast:
        return build_output(
            FlowCutOnevisionModelOutputWithPast,
            last_hidden_state=output.last_hidden_state,
            cache=cache_of(output),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            image_outputs=image_output,
            flowcut_state=output.state,
            input_positions=output.token_info[INPUT_POSITION],
        )


class FlowCutLlavaOnevisionForConditionalGeneration(
    LayerGroupsGenerationMixin, RemoteCodeSavingMixin, LlavaOnevisionForConditionalGeneration
):
    """[`LlavaOnevisionForConditionalGeneration`] that prunes visual tokens with VFlowOpt (see
    [`FlowCutLlavaOnevisionModel`])."""

    config_class = FlowCutLlavaOnevisionConfig
    _auto_class = "AutoModelForImageTextToText"
    flowcut_auto_map = AUTO_MAP
    flowcut_remote_code_entry_files = REMOTE_CODE_ENTRY_FILES
    per_image_fields = PER_IMAGE_FIELDS

    def __init__(self, config: FlowCutLlavaOnevisionConfig):
        # Not super().__init__: it would build (and initialise) a stock model only to throw it away.
        LlavaOnevisionPreTrainedModel.__init__(self, config)
        self.model = FlowCutLlavaOnevisionModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def configure_vflowopt(self, enabled: bool | None = None, **settings) -> None:
        """See [`FlowCutLlavaOnevisionModel.configure_vflowopt`]; the stock processor needs no change."""
        self.model.configure_vflowopt(enabled=enabled, **settings)

    def configure_flowcut(
        self, target_num: int | None = None, enabled: bool | None = None, llm_prune_layer: int | None = None
    ) -> None:
        """See [`FlowCutLlavaOnevisionModel.configure_flowcut`]; the stock processor needs no change."""
        self.model.configure_flowcut(target_num=target_num, enabled=enabled, llm_prune_layer=llm_prune_layer)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        pixel_values_videos: torch.Tensor | None = None,
        image_sizes_videos: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        vision_aspect_ratio: str | None = None,
        batch_num_images: torch.LongTensor | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutOnevisionCausalLMOutputWithPast:
        cache = one_cache(cache, past_key_values)
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, image_sizes=image_sizes,
            pixel_values_videos=pixel_values_videos, image_sizes_videos=image_sizes_videos,
            attention_mask=attention_mask, position_ids=position_ids, cache=cache,
            inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, vision_aspect_ratio=vision_aspect_ratio,
            batch_num_images=batch_num_images, use_cache=use_cache, mm_encoder_outputs=mm_encoder_outputs,
            flowcut_state=flowcut_state, return_dict=True, **kwargs,
        )
        logits, loss = self.logits_and_loss(outputs, labels, logits_to_keep, **kwargs)
        return build_output(
            FlowCutOnevisionCausalLMOutputWithPast,
            loss=loss,
            logits=logits,
            cache=cache_of(outputs),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs_of(outputs),
            flowcut_state=getattr(outputs, "flowcut_state", None),
            input_positions=getattr(outputs, "input_positions", None),
        )


__all__ = [
    "AUTO_MAP",
    "FlowCutLlavaOnevisionForConditionalGeneration",
    "FlowCutLlavaOnevisionModel",
    "FlowCutOnevisionCausalLMOutputWithPast",
    "FlowCutOnevisionImageFeaturesOutput",
    "FlowCutOnevisionModelOutputWithPast",
]
