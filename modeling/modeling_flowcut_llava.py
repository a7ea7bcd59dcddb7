"""LLaVA with FlowCut visual-token pruning, as Hugging Face remote code.

The only behavioural change against stock LLaVA is in ``FlowCutLlavaModel.get_image_features``: the CLIP encoder
runs layer by layer and :class:`FlowCutSelector` drops patch tokens as it goes, so each image yields
``flowcut_target_num`` features instead of 576. Because the count per image is fixed, the matching processor emits
the same number of ``<image>`` placeholders and everything downstream (masks, positions, KV cache, generate, beam
search) is stock transformers.
"""

from __future__ import annotations

import shutil
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn
from transformers import LlavaForConditionalGeneration, LlavaModel
from transformers.models.llava.modeling_llava import LlavaPreTrainedModel
from transformers.conversion_mapping import (
    get_checkpoint_conversion_mapping,
    register_checkpoint_conversion_mapping,
)
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_flowcut_llava import DEFAULT_TARGET_NUM, FlowCutLlavaConfig, validate_enabled, validate_target_num
from .flowcut_core import FlowCutSelector, compute_layer_signals

AUTO_MAP = {
    "AutoConfig": "configuration_flowcut_llava.FlowCutLlavaConfig",
    "AutoModel": "modeling_flowcut_llava.FlowCutLlavaModel",
    "AutoModelForImageTextToText": "modeling_flowcut_llava.FlowCutLlavaForConditionalGeneration",
}

# transformers 5 skips its llava checkpoint-key conversion for custom classes unless they are registered by name;
# without this, llava-hf checkpoints load with a silently random language model.
register_checkpoint_conversion_mapping(
    "FlowCutLlavaForConditionalGeneration", get_checkpoint_conversion_mapping("llava"), overwrite=True
)
register_checkpoint_conversion_mapping("FlowCutLlavaModel", get_checkpoint_conversion_mapping("LlavaModel"), overwrite=True)


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


@dataclass(frozen=True)
class FlowCutSettings:
    enabled: bool
    target_num: int
    prune_interval: int
    history_weight: float

    @classmethod
    def from_config(cls, config) -> "FlowCutSettings":
        # Read fields, not types: a config loaded as remote code may come from another module copy of the class.
        return cls(
            enabled=bool(getattr(config, "flowcut_enabled", True)),
            target_num=getattr(config, "flowcut_target_num", DEFAULT_TARGET_NUM),
            prune_interval=getattr(config, "flowcut_prune_interval", 2),
            history_weight=getattr(config, "flowcut_history_weight", 0.5),
        )


def num_image_patches(vision_config) -> int:
    return (vision_config.image_size // vision_config.patch_size) ** 2


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """Index of the encoder layer whose output LLaVA reads (``hidden_states[k]`` is the output of layer ``k - 1``)."""
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ValueError(
            f"FlowCut supports a single vision_feature_layer (an int such as -2), got {vision_feature_layer!r}. "
            "Set flowcut_enabled=False to use multi-layer features unpruned."
        )
    layer = vision_feature_layer - 1 if vision_feature_layer >= 0 else num_layers + vision_feature_layer
    if not 1 <= layer < num_layers:
        raise ValueError(
            f"vision_feature_layer={vision_feature_layer} selects encoder layer {layer}; FlowCut needs at least two "
            f"encoder layers before the feature layer (the encoder has {num_layers})."
        )
    return layer


def retained_tokens_per_image(config) -> int:
    """How many ``<image>`` tokens one image becomes in the language model under this config."""
    settings = FlowCutSettings.from_config(config)
    full_count = num_image_patches(config.vision_config)
    if getattr(config, "vision_feature_select_strategy", "default") == "full":
        full_count += 1
    if not settings.enabled:
        return full_count
    return min(settings.target_num, full_count)


@contextmanager
def record_module_outputs(*modules: nn.Module):
    """Records the outputs of ``modules`` during the block, per instance, and removes the hooks afterwards."""
    captured: list[torch.Tensor | None] = [None] * len(modules)

    def make_hook(position: int):
        def hook(_module, _inputs, output):
            captured[position] = output

        return hook

    handles = [module.register_forward_hook(make_hook(i)) for i, module in enumerate(modules)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


def clip_layer_with_signals(layer: nn.Module, hidden_states: torch.Tensor):
    """Runs one stock CLIP encoder layer and returns its output with FlowCut's O(N) signals.

    The layer itself runs unchanged, through whichever attention backend it is configured with; its q/k/v
    projections are read with forward hooks, so no attention matrix is ever requested.
    """
    attention = layer.self_attn
    with record_module_outputs(attention.q_proj, attention.k_proj, attention.v_proj) as captured:
        output = layer(hidden_states, None)
    queries, keys, values = captured
    batch, length, _ = keys.shape
    heads, head_dim = attention.num_heads, attention.head_dim
    with torch.no_grad():
        signals = compute_layer_signals(
            queries[:, 0].reshape(batch, heads, head_dim),
            keys.view(batch, length, heads, head_dim),
            values.view(batch, length, heads, head_dim),
            scaling=attention.scale,
        )
    return output, signals


def encode_clip_with_flowcut(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,
    feature_layer: int,
    target_length: int,
    settings: FlowCutSettings,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Runs a CLIP vision tower up to ``feature_layer`` with progressive FlowCut pruning.

    Returns the feature layer's hidden states (CLS first, ``target_length`` tokens), the kept patch indices
    ``[batch, target_length - 1]`` and the per-layer sequence lengths.
    """
    vision_model = getattr(vision_tower, "vision_model", vision_tower)
    hidden_states = vision_model.embeddings(pixel_values)
    hidden_states = vision_model.pre_layrnorm(hidden_states)
    batch_size, sequence_length, _ = hidden_states.shape
    selector = FlowCutSelector(
        target_length=target_length,
        last_layer=feature_layer,
        batch_size=batch_size,
        num_patches=sequence_length - 1,
        device=hidden_states.device,
        prune_interval=settings.prune_interval,
        history_weight=settings.history_weight,
    )
    # Layers after the feature layer would be thrown away by LLaVA, so they never run.
    for layer_idx, layer in enumerate(vision_model.encoder.layers[: feature_layer + 1]):
        selector.record_layer(hidden_states.shape[1])
        if selector.active:
            hidden_states, signals = clip_layer_with_signals(layer, hidden_states)
            hidden_states = selector.after_layer(layer_idx, hidden_states, signals)
        else:
            hidden_states = layer(hidden_states, None)
    return hidden_states, selector.keep_indices, selector.sequence_lengths


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
        # Validate both before changing either, so a bad call leaves the model as it was.
        if target_num is not None:
            validate_target_num(target_num)
        if enabled is not None:
            validate_enabled(enabled)
        if target_num is not None:
            self.config.flowcut_target_num = target_num
        if enabled is not None:
            self.config.flowcut_enabled = enabled


class FlowCutLlavaForConditionalGeneration(LlavaForConditionalGeneration):
    """[`LlavaForConditionalGeneration`] that prunes visual tokens with FlowCut (see [`FlowCutLlavaModel`])."""

    config_class = FlowCutLlavaConfig
    _auto_class = "AutoModelForImageTextToText"

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

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = dict(AUTO_MAP)
        super().save_pretrained(save_directory, *args, **kwargs)
        copy_remote_code_files(save_directory)


def remote_code_files() -> list[Path]:
    """The remote-code files that sit beside this one (processor included); ``__init__.py`` is not one of them."""
    return sorted(p for p in Path(__file__).resolve().parent.glob("*.py") if p.name != "__init__.py")


def copy_remote_code_files(save_directory) -> None:
    """Copies the remote-code files, byte for byte, into ``save_directory``."""
    for source in remote_code_files():
        destination = Path(save_directory) / source.name
        if destination.resolve() != source:
            shutil.copyfile(source, destination)


__all__ = [
    "FlowCutLlavaForConditionalGeneration",
    "FlowCutLlavaModel",
    "FlowCutImageFeaturesOutput",
    "retained_tokens_per_image",
    "AUTO_MAP",
]
