"""LLaVA with FlowCut visual-token pruning, as Hugging Face remote code.

The only behavioural change against stock LLaVA is in ``FlowCutLlavaModel.get_image_features``: the CLIP encoder
runs layer by layer and :class:`FlowCutSelector` drops patch tokens as it goes, so each image yields
``flowcut_target_num`` features instead of 576. Because the count per image is fixed, the matching processor emits
the same number of ``<image>`` placeholders and everything downstream (masks, positions, KV cache, generate, beam
search) is stock transformers.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_flowcut_llava import FlowCutLlavaConfig
from .flowcut_clip import encode_clip_with_flowcut, feature_layer_index, num_image_patches
from .flowcut_remote_code import RemoteCodeSavingMixin, register_stock_checkpoint_conversion
from .flowcut_settings import FIELD_VALIDATORS, FlowCutSettings, configure_flowcut_fields, validate_target_num

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
    """

    keep_indices: list[torch.LongTensor] | None = None
    token_schedule: list[int] | None = None


def retained_tokens_per_image(config) -> int:
    """How many ``<image>`` tokens one image becomes in the language model under this config."""
    settings = FlowCutSettings.from_config(config)
    full_count = num_image_patches(config.vision_config)
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        full_count += 1
    if not settings.enabled:
        return full_count
    return min(settings.target_num, full_count)


class FlowCutLlavaModel(LlavaModel):
    """[`LlavaModel`] whose `get_image_features` keeps `config.flowcut_target_num` visual tokens per image."""

    config_class = FlowCutLlavaConfig

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
        settings = FlowCutSettings.from_config(self.config)
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


class FlowCutLlavaForConditionalGeneration(RemoteCodeSavingMixin, LlavaForConditionalGeneration):
    """[`LlavaForConditionalGeneration`] that prunes visual tokens with FlowCut (see [`FlowCutLlavaModel`])."""

    config_class = FlowCutLlavaConfig
    _auto_class = "AutoModelForImageTextToText"
    flowcut_auto_map = AUTO_MAP
    flowcut_remote_code_entry_files = REMOTE_CODE_ENTRY_FILES

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

    @property
    def flowcut_tokens_per_image(self) -> int:
        """Visual tokens each image becomes under the current settings."""
        return retained_tokens_per_image(self.config)


__all__ = [
    "FlowCutLlavaForConditionalGeneration",
    "FlowCutLlavaModel",
    "FlowCutImageFeaturesOutput",
    "retained_tokens_per_image",
    "AUTO_MAP",
]
