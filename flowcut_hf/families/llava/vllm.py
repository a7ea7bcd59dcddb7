"""LLaVA-1.5 in vLLM: FlowCut in vLLM's own CLIP tower, with the prompt holding the kept count of placeholders.

FlowCut on LLaVA-1.5 prunes only before the language model, to a count known when the prompt is built
(``flowcut_target_num`` per image), so vLLM serves it whole: the request processor emits that many ``<image>``
placeholders, and the vision tower runs FlowCut's selection (:func:`flowcut_hf.modeling.flowcut_clip.encode_clip_with_flowcut`,
the loop the transformers remote code runs) on vLLM's layers. vLLM's CLIP fuses q, k and v into one projection; the
signals are read from its output, gathered over the tensor-parallel ranks when the tower is sharded, so every rank
selects the same tokens. Each image is pruned on its own: its kept tokens do not depend on the requests it is batched
with, which vLLM's encoder cache relies on (the transformers model gives the same with one image per call).

VFlowOpt variants also prune inside the language model: they are refused at load, as are stock checkpoints' other
vision towers (Pixtral, SigLIP) carrying FlowCut fields.
"""

from __future__ import annotations

import torch
from torch import nn
from transformers import CLIPVisionConfig, LlavaConfig, PixtralVisionConfig
from vllm.distributed import tensor_model_parallel_all_gather
from vllm.model_executor.models.llava import (
    LlavaDummyInputsBuilder,
    LlavaForConditionalGeneration,
    LlavaMultiModalProcessor,
    LlavaProcessingInfo,
    PixtralHFMultiModalProcessor,
    PixtralHFProcessingInfo,
)
from vllm.multimodal import MULTIMODAL_REGISTRY

from ...benchmark import uniform_indices
from ...modeling.flowcut_clip import clip_signals, encode_clip_with_flowcut, feature_layer_index
from ...modeling.flowcut_core import LayerSignals, record_module_outputs
from ...modeling.flowcut_settings import FlowCutSettings, validate_target_num
from ...modeling.modeling_flowcut_llava import retained_tokens_per_image
from ...vllm_support import NotServableError, refuse_unservable


def flowcut_settings_to_serve(config) -> FlowCutSettings | None:
    """The FlowCut settings vLLM runs a checkpoint with, None for a stock one; refuses what it cannot serve."""
    if refuse_unservable(config) is None:
        return None
    if not isinstance(config.vision_config, CLIPVisionConfig):
        raise NotServableError(
            f"flowcut-hf: FlowCut on LLaVA-1.5 needs a CLIP vision tower; this checkpoint has "
            f"{type(config.vision_config).__name__}. Serve its unpruned base model instead."
        )
    settings = FlowCutSettings.from_config(config)
    try:
        feature_layer_index(config.vision_feature_layer, config.vision_config.num_hidden_layers)
        validate_target_num(settings.target_num)
    except ValueError as error:
        raise NotServableError(f"flowcut-hf: cannot serve this LLaVA-1.5 FlowCut variant: {error}") from error
    return settings


class FlowCutLlavaProcessingInfo(LlavaProcessingInfo):
    """Counts ``flowcut_target_num`` placeholders per image for a FlowCut variant (the HF variant's processor does the
    same), the stock count otherwise."""

    def get_num_image_tokens(self, *, image_width: int, image_height: int) -> int:
        config = self.get_hf_config()
        stock = super().get_num_image_tokens(image_width=image_width, image_height=image_height)
        if flowcut_settings_to_serve(config) is None:
            return stock
        return min(stock, retained_tokens_per_image(config))


def processing_info(ctx) -> LlavaProcessingInfo | PixtralHFProcessingInfo:
    config = ctx.get_hf_config(LlavaConfig)
    flowcut_settings_to_serve(config)  # a variant vLLM cannot serve is refused here, before any weights load
    if isinstance(config.vision_config, PixtralVisionConfig):
        return PixtralHFProcessingInfo(ctx)
    return FlowCutLlavaProcessingInfo(ctx)


def multimodal_processor(info, dummy_inputs):
    if isinstance(info, PixtralHFProcessingInfo):
        return PixtralHFMultiModalProcessor(info, dummy_inputs)
    return LlavaMultiModalProcessor(info, dummy_inputs)


def fused_clip_layer_with_signals(layer: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, LayerSignals]:
    """Runs one vLLM CLIP encoder layer and returns its output with FlowCut's signals, read from the fused q/k/v
    projection (all heads: a sharded tower's ranks gather theirs, in head order)."""
    attention = layer.self_attn
    with record_module_outputs(attention.qkv_proj) as captured:
        output = layer(hidden_states)
    queries, keys, values = captured[0][0].chunk(3, dim=-1)
    if attention.tp_size > 1:
        queries = tensor_model_parallel_all_gather(queries[:, :1].contiguous(), dim=-1)
        keys = tensor_model_parallel_all_gather(keys.contiguous(), dim=-1)
        values = tensor_model_parallel_all_gather(values.contiguous(), dim=-1)
    return output, clip_signals(queries, keys, values, attention.num_heads, attention.head_dim, attention.scale)


def run_vllm_clip_layer(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    return layer(hidden_states)


@MULTIMODAL_REGISTRY.register_processor(
    multimodal_processor, info=processing_info, dummy_inputs=LlavaDummyInputsBuilder
)
class FlowCutLlavaForVllm(LlavaForConditionalGeneration):
    """vLLM's LLaVA, whose vision tower keeps ``flowcut_target_num`` tokens per image for a FlowCut variant; a stock
    checkpoint runs exactly as in vLLM's own class."""

    def __init__(self, *, vllm_config, prefix: str = "") -> None:
        self.flowcut_settings = flowcut_settings_to_serve(vllm_config.model_config.hf_config)
        super().__init__(vllm_config=vllm_config, prefix=prefix)

    def _image_pixels_to_features(self, vision_tower, pixel_values):
        if self.flowcut_settings is None:
            return super()._image_pixels_to_features(vision_tower, pixel_values)
        config = self.config
        keeps_cls = config.vision_feature_select_strategy == "full"
        target_length = retained_tokens_per_image(config) + (not keeps_cls)
        feature_layer = feature_layer_index(config.vision_feature_layer, config.vision_config.num_hidden_layers)
        features = []
        for image in pixel_values:
            hidden_states, _, _ = encode_clip_with_flowcut(
                vision_tower, image.unsqueeze(0).to(vision_tower.dtype), feature_layer, target_length,
                self.flowcut_settings, layer_with_signals=fused_clip_layer_with_signals, run_layer=run_vllm_clip_layer,
            )
            features.append(hidden_states if keeps_cls else hidden_states[:, 1:])
        return torch.cat(features)


class UniformOracleLlavaForVllm(FlowCutLlavaForVllm):
    """The bench's oracle in vLLM (``flowcut-hf bench --engine vllm``): vLLM's LLaVA with its full vision tower, of whose
    features only ``flowcut_target_num`` evenly spaced ones per image go to the language model, as many as FlowCut
    keeps; registered under its own architecture name, which only the bench's oracle checkpoints carry."""

    def _image_pixels_to_features(self, vision_tower, pixel_values):
        features = LlavaForConditionalGeneration._image_pixels_to_features(self, vision_tower, pixel_values)
        if self.flowcut_settings is None:
            return features
        keep = uniform_indices(features.shape[1], retained_tokens_per_image(self.config)).to(features.device)
        return features[:, keep]


__all__ = ["FlowCutLlavaForVllm", "UniformOracleLlavaForVllm", "FlowCutLlavaProcessingInfo", "flowcut_settings_to_serve", "fused_clip_layer_with_signals"]
