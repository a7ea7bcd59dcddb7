"""LLaVA with FlowCut or VFlowOpt visual-token pruning, as Hugging Face remote code; ``config.pruning_method`` says
which runs.

**FlowCut** (the default) changes only ``FlowCutLlavaModel.get_image_features``: the CLIP encoder runs layer by layer
and :class:`FlowCutSelector` drops patch tokens as it goes, so each image yields ``flowcut_target_num`` features
instead of 576. Because the count per image is fixed, the matching processor emits the same number of ``<image>``
placeholders and everything downstream (masks, positions, KV cache, generate, beam search) is stock transformers.

**VFlowOpt** takes the stock processor's 576 placeholders per image: the importance map of CLIP's feature layer (its
important set chosen over all 577 tokens, CLS included, then the 576 patch columns), stage 0 on the 24 x 24 grid after
the projector, and the LLM stages of ``vflowopt_llm_layers``, run by :func:`run_layer_groups` as for LLaVA-NeXT.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava.modeling_llava import (
    LlavaCausalLMOutputWithPast,
    LlavaModelOutputWithPast,
    LlavaPreTrainedModel,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_flowcut_llava import LLAVA_CONFIG_VALIDATORS, FlowCutLlavaConfig
from .flowcut_clip import encode_clip_with_flowcut, feature_layer_index, num_image_patches
from .flowcut_compat import build_output, cache_kwargs, cache_of, image_outputs_of, one_cache
from .flowcut_llm_stage import (
    CONTINUE,
    INPUT_POSITION,
    STOCK,
    LayerGroupsGenerationMixin,
    LayerGroupsState,
    check_placeholder_counts,
    continue_layer_groups,
    forward_route,
    placeholder_positions,
    resolved_use_cache,
)
from .flowcut_remote_code import RemoteCodeSavingMixin, register_stock_checkpoint_conversion
from .flowcut_settings import FIELD_VALIDATORS, FlowCutSettings, configure_flowcut_fields, validate_target_num
from .vflowopt_core import (
    combine_importance,
    configure_vflowopt_fields,
    crop_entropies,
    run_with_importance_maps,
    stage0_images,
    vflowopt_prefill,
    vflowopt_running,
    vflowopt_settings,
)

AUTO_MAP = {
    "AutoConfig": "configuration_flowcut_llava.FlowCutLlavaConfig",
    "AutoModel": "modeling_flowcut_llava.FlowCutLlavaModel",
    "AutoModelForImageTextToText": "modeling_flowcut_llava.FlowCutLlavaForConditionalGeneration",
}
# The processor is not imported by the model, but a saved folder needs it.
REMOTE_CODE_ENTRY_FILES = ("modeling_flowcut_llava.py", "processing_flowcut_llava.py")

register_stock_checkpoint_conversion(
    {"FlowCutLlavaForConditionalGeneration": "llava", "FlowCutLlavaModel": "LlavaModel"}
)

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # LLaVA-1.5's CLIP image normalisation, for VFlowOpt's entropy term
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


@dataclass
class FlowCutImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    Output of `FlowCutLlavaModel.get_image_features`.

    pooler_output (`list[torch.FloatTensor]`):
        Per image, the projected features fed to the language model, `[kept_tokens, text_hidden_size]`.
    keep_indices (`list[torch.LongTensor]`):
        Per image, the kept patch indices, 0-based among the patches (CLS excluded), sorted ascending (raster order).
    token_schedule (`list[int]`):
        The sequence length, CLS included, that each vision-encoder layer that ran processed.
    placeholder_counts, kept_positions, recycled_positions, importance, prunable (`list`):
        VFlowOpt only (`keep_indices` and `token_schedule` are then None), per image: its 576 placeholders, the
        positions among its patches of the tokens that enter the language model after stage 0 and of those that hold
        a recycled token, every patch's importance, and True (the LLM stages may drop its tokens).
    """

    keep_indices: list[torch.LongTensor] | None = None
    token_schedule: list[int] | None = None
    placeholder_counts: list[int] | None = None
    kept_positions: list[torch.LongTensor] | None = None
    recycled_positions: list[torch.LongTensor] | None = None
    importance: list[torch.FloatTensor] | None = None
    prunable: list[bool] | None = None


PER_IMAGE_FIELDS = ("pooler_output", "keep_indices", "placeholder_counts", "kept_positions", "recycled_positions", "importance", "prunable")


@dataclass
class FlowCutLlavaModelOutputWithPast(LlavaModelOutputWithPast):
    r"""
    flowcut_state ([`LayerGroupsState`], *optional*):
        VFlowOpt: the per-layer-group token layout a later forward call (a decoding step) needs; `generate()` passes
        it back. None when the forward was the stock one (FlowCut, or pruning off).
    input_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
        VFlowOpt: for each position of `last_hidden_state`, the input column it comes from, -1 for padding.
    """

    image_outputs: FlowCutImageFeaturesOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    flowcut_state: LayerGroupsState | None = None
    input_positions: torch.LongTensor | None = None


@dataclass
class FlowCutLlavaCausalLMOutputWithPast(LlavaCausalLMOutputWithPast):
    r"""
    flowcut_state, input_positions:
        See [`FlowCutLlavaModelOutputWithPast`]; `logits` and the loss follow the pruned sequence.
    """

    image_outputs: FlowCutImageFeaturesOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    flowcut_state: LayerGroupsState | None = None
    input_positions: torch.LongTensor | None = None


def retained_tokens_per_image(config) -> int:
    """How many ``<image>`` placeholders one image needs under this config (FlowCut: the tokens it becomes in the
    language model; VFlowOpt takes the stock count and shortens the sequence itself)."""
    settings = FlowCutSettings.from_config(config)
    full_count = num_image_patches(config.vision_config)
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        full_count += 1
    if not settings.enabled or getattr(config, "pruning_method", "flowcut") == "vflowopt":
        return full_count
    return min(settings.target_num, full_count)


class FlowCutLlavaModel(LlavaModel):
    """[`LlavaModel`] whose `get_image_features` keeps `config.flowcut_target_num` visual tokens per image."""

    config_class = FlowCutLlavaConfig

    def pruning_enabled(self) -> bool:
        """Whether the forward shortens the sequence itself (VFlowOpt). FlowCut keeps a fixed count per image that
        the processor matches, so its forward is the stock one."""
        return vflowopt_running(self.config)

    def configure_vflowopt(self, enabled: bool | None = None, **settings) -> None:
        """Changes VFlowOpt settings (short names: ``vision_keep``, ``threshold``, ``llm_keeps``, ...) or switches
        it on or off; all values are checked, together, before any is changed. ``config.pruning_method`` says which
        method runs (``flowcut_hf.prune(model, method="vflowopt")`` sets it)."""
        configure_vflowopt_fields(self.config, LLAVA_CONFIG_VALIDATORS, enabled=enabled, **settings)

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        **kwargs,
    ) -> FlowCutImageFeaturesOutput:
        if self.pruning_enabled():
            return self.vflowopt_image_features(pixel_values, vision_feature_layer, vision_feature_select_strategy, **kwargs)
        settings = FlowCutSettings.from_config(self.config)
        if self.config.pruning_method == "vflowopt":  # switched off: the stock features
            settings = FlowCutSettings(enabled=False, target_num=settings.target_num)
        vision_config = self.config.vision_config
        patches = num_image_patches(vision_config)
        keeps_cls = vision_feature_select_strategy == "full"
        # With strategy "full" the CLS token is one of the features handed to the LLM, so it uses up one slot.
        target_length = settings.target_num if keeps_cls else settings.target_num + 1
        if not settings.enabled or target_length >= patches + 1:
            return self._stock_image_features(
                pixel_values, vision_feature_layer, vision_feature_select_strategy, image_sizes, **kwargs
            )
        validate_target_num(settings.target_num)
        feature_layer = feature_layer_index(vision_feature_layer, vision_config.num_hidden_layers)
        hidden_states, keep_indices, schedule = encode_clip_with_flowcut(
            self.vision_tower, pixel_values, feature_layer, target_length, settings
        )
        selected = hidden_states if keeps_cls else hidden_states[:, 1:]
        image_features = self.multi_modal_projector(selected)
        return FlowCutImageFeaturesOutput(
            last_hidden_state=hidden_states,
            pooler_output=list(image_features),
            keep_indices=list(keep_indices),
            token_schedule=schedule,
        )

    def vflowopt_image_features(
        self, pixel_values, vision_feature_layer, vision_feature_select_strategy, **kwargs
    ) -> FlowCutImageFeaturesOutput:
        """VFlowOpt's map and stage 0 on each image's 24 x 24 patch grid (no newline tokens in LLaVA-1.5)."""
        settings = vflowopt_settings(self.config)
        if vision_feature_select_strategy != "default":
            raise ValueError(
                f"VFlowOpt on LLaVA-1.5 needs vision_feature_select_strategy='default' (CLS dropped), got "
                f"{vision_feature_select_strategy!r}; set vflowopt_enabled=False to run this model unpruned."
            )
        stock, maps = run_with_importance_maps(
            self.vision_tower, vision_feature_layer, settings.threshold,
            lambda: LlavaModel.get_image_features(
                self, pixel_values=pixel_values, vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy, return_dict=True, **kwargs,
            ),
            leading_tokens=1,
        )
        vision = self.config.vision_config
        if settings.entropy_weight:
            entropy = crop_entropies(pixel_values, vision.patch_size, CLIP_MEAN, CLIP_STD)
            maps = combine_importance(maps, entropy.to(maps.device), settings.entropy_weight)
        no_newlines = [torch.zeros(len(m), dtype=torch.bool, device=maps.device) for m in maps]
        stage0 = stage0_images(
            stock.pooler_output, list(maps), no_newlines, [1] * len(maps), vision.image_size // vision.patch_size, settings
        )
        return FlowCutImageFeaturesOutput(last_hidden_state=stock.last_hidden_state, **vars(stage0))

    def placeholder_mask(self, input_ids, inputs_embeds) -> torch.Tensor:
        return placeholder_positions(self.get_input_embeddings(), self.config.image_token_id, input_ids, inputs_embeds)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        use_cache: bool | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutLlavaModelOutputWithPast:
        r"""
        flowcut_state ([`LayerGroupsState`], *optional*):
            VFlowOpt: the `flowcut_state` of the previous call's output, when continuing from its `cache` (decoding
            steps; `generate()` passes it). FlowCut runs the stock forward and needs none.
        """
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        stock_kwargs = dict(
            input_ids=input_ids, attention_mask=attention_mask, position_ids=position_ids, **cache_kwargs(cache),
            inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, image_sizes=image_sizes, use_cache=use_cache,
            **kwargs,
        )
        image_output = None
        if self.pruning_enabled():
            image_output = (mm_encoder_outputs or {}).get("image")
            if image_output is None and pixel_values is not None and pixel_values.size(0) > 0:
                image_output = self.get_image_features(
                    pixel_values, vision_feature_layer=vision_feature_layer,
                    vision_feature_select_strategy=vision_feature_select_strategy, return_dict=True,
                )
        outputs = {"image": image_output} if image_output is not None else {}
        new_tokens = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        route = forward_route(self.pruning_enabled(), flowcut_state, outputs, cache, new_tokens, attention_mask)
        if route == STOCK:
            return LlavaModel.forward(self, pixel_values=pixel_values, mm_encoder_outputs=mm_encoder_outputs, **stock_kwargs)
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        use_cache = resolved_use_cache(self, self.config.text_config, use_cache)
        if route == CONTINUE:
            output = continue_layer_groups(
                self.language_model, inputs_embeds, attention_mask, flowcut_state, cache, use_cache, **kwargs
            )
            return self.pruned_output(output, None)
        if not outputs:  # text only: nothing to prune
            return LlavaModel.forward(self, **{**stock_kwargs, "input_ids": None, "inputs_embeds": inputs_embeds})
        placeholders = self.placeholder_mask(input_ids, inputs_embeds)
        check_placeholder_counts(
            placeholders, image_output.placeholder_counts,
            "VFlowOpt takes the stock LlavaProcessor's placeholders: build the inputs with the stock processor (not a "
            "FlowCutLlavaProcessor, which emits FlowCut's pruned count).",
        )
        output = vflowopt_prefill(
            self.language_model, self.config, inputs_embeds, placeholders, attention_mask, image_output,
            vflowopt_settings(self.config), cache, use_cache,
            flowcut_state.prompt_length if flowcut_state is not None else inputs_embeds.shape[1], **kwargs,
        )
        return self.pruned_output(output, image_output)

    @staticmethod
    def pruned_output(output, image_output) -> FlowCutLlavaModelOutputWithPast:
        return build_output(
            FlowCutLlavaModelOutputWithPast,
            last_hidden_state=output.last_hidden_state,
            cache=cache_of(output),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            image_outputs=image_output,
            flowcut_state=output.state,
            input_positions=output.token_info[INPUT_POSITION],
        )

    def _stock_image_features(
        self, pixel_values, vision_feature_layer, vision_feature_select_strategy, image_sizes, **kwargs
    ) -> FlowCutImageFeaturesOutput:
        stock = LlavaModel.get_image_features(
            self,
            pixel_values=pixel_values,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            image_sizes=image_sizes,
            return_dict=True,
            **kwargs,
        )
        patches = num_image_patches(self.config.vision_config)
        all_patches = torch.arange(patches, device=pixel_values.device)
        return FlowCutImageFeaturesOutput(
            last_hidden_state=stock.last_hidden_state,
            pooler_output=stock.pooler_output,
            hidden_states=stock.hidden_states,
            attentions=stock.attentions,
            keep_indices=[all_patches] * len(stock.pooler_output),
            token_schedule=[patches + 1] * self.config.vision_config.num_hidden_layers,
        )

    def get_placeholder_mask(self, input_ids, inputs_embeds, image_features):
        try:
            return super().get_placeholder_mask(input_ids, inputs_embeds=inputs_embeds, image_features=image_features)
        except ValueError as error:
            # Only the failure path pays for counting; the stock message does not say how to fix it.
            raise ValueError(self._placeholder_mismatch_message(input_ids, inputs_embeds, image_features)) from error

    def _placeholder_mismatch_message(self, input_ids, inputs_embeds, image_features) -> str:
        if input_ids is not None:
            placeholders = int((input_ids == self.config.image_token_id).sum())
        else:
            image_embedding = self.get_input_embeddings()(
                torch.tensor(self.config.image_token_id, device=inputs_embeds.device)
            )
            placeholders = int((inputs_embeds == image_embedding).all(-1).sum())
        per_image = retained_tokens_per_image(self.config)
        images = image_features.shape[0] // max(per_image, 1)
        return (
            f"The input holds {placeholders} image placeholder tokens, but the {images} image(s) give "
            f"{image_features.shape[0]} visual tokens ({per_image} per image after FlowCut). Build the inputs with "
            "this model's processor, which emits the pruned count: AutoProcessor.from_pretrained(<repo>, "
            f"trust_remote_code=True), or flowcut_hf.flowcut_processor(processor, target_num={per_image}) for a "
            "stock LlavaProcessor; also check that every image has one <image> in the prompt."
        )

    def configure_flowcut(self, target_num: int | None = None, enabled: bool | None = None) -> None:
        """Changes the retained count and/or switches pruning on or off, on this loaded model."""
        configure_flowcut_fields(self.config, FIELD_VALIDATORS, target_num=target_num, enabled=enabled)


class FlowCutLlavaForConditionalGeneration(LayerGroupsGenerationMixin, RemoteCodeSavingMixin, LlavaForConditionalGeneration):
    """[`LlavaForConditionalGeneration`] that prunes visual tokens with FlowCut or VFlowOpt (see
    [`FlowCutLlavaModel`])."""

    config_class = FlowCutLlavaConfig
    _auto_class = "AutoModelForImageTextToText"
    flowcut_auto_map = AUTO_MAP
    flowcut_remote_code_entry_files = REMOTE_CODE_ENTRY_FILES
    per_image_fields = PER_IMAGE_FIELDS

    def __init__(self, config: FlowCutLlavaConfig):
        # Not super().__init__: it would build (and initialise) a stock LlavaModel only to throw it away.
        LlavaPreTrainedModel.__init__(self, config)
        self.model = FlowCutLlavaModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def configure_flowcut(self, target_num: int | None = None, enabled: bool | None = None) -> None:
        """Changes the retained count and/or switches pruning on or off, on this loaded model.

        The processor must emit the same count: ``processor.flowcut_target_num = target_num``.
        """
        self.model.configure_flowcut(target_num=target_num, enabled=enabled)

    def configure_vflowopt(self, enabled: bool | None = None, **settings) -> None:
        """See [`FlowCutLlavaModel.configure_vflowopt`]; VFlowOpt takes the stock processor."""
        self.model.configure_vflowopt(enabled=enabled, **settings)

    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        image_sizes: torch.Tensor | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutLlavaCausalLMOutputWithPast:
        cache = one_cache(cache, past_key_values)
        outputs = self.model(
            input_ids=input_ids, pixel_values=pixel_values, attention_mask=attention_mask, position_ids=position_ids,
            cache=cache, inputs_embeds=inputs_embeds, vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy, image_sizes=image_sizes,
            mm_encoder_outputs=mm_encoder_outputs, flowcut_state=flowcut_state, return_dict=True, **kwargs,
        )
        logits, loss = self.logits_and_loss(outputs, labels, logits_to_keep, **kwargs)
        return build_output(
            FlowCutLlavaCausalLMOutputWithPast,
            loss=loss,
            logits=logits,
            cache=cache_of(outputs),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs_of(outputs),
            flowcut_state=getattr(outputs, "flowcut_state", None),
            input_positions=getattr(outputs, "input_positions", None),
        )

    @property
    def flowcut_tokens_per_image(self) -> int:
        """Visual tokens each image becomes under the current settings."""
        return retained_tokens_per_image(self.config)


__all__ = [
    "FlowCutLlavaCausalLMOutputWithPast",
    "FlowCutLlavaForConditionalGeneration",
    "FlowCutLlavaModelOutputWithPast",
    "FlowCutLlavaModel",
    "FlowCutImageFeaturesOutput",
    "retained_tokens_per_image",
    "AUTO_MAP",
]
