"""LLaVA-NeXT with FlowCut visual-token pruning in two stages, as Hugging Face remote code.

1. **Vision stage** (:meth:`FlowCutLlavaNextModel.get_image_features`): every anyres crop of an image (the base image
   and each grid crop) goes through CLIP with progressive FlowCut pruning down to ``flowcut_target_num // 2``
   patches. The crops of one image share the prune count of each layer, as in the authors' code; images never share
   it, so an image's selection does not depend on its batch-mates. The base crop's kept tokens come first, in raster
   order; the grid crops' kept tokens are put back on the full grid, the padding rows or columns are dropped with
   LLaVA's own unpad arithmetic (it truncates, where transformers rounds), and the rest follow in raster order. No
   ``image_newline`` is added, except to an image made of a single crop, as in the authors' code.
2. **LLM stage** (:class:`FlowCutLLMPruner`, run by :func:`run_layer_groups`): after decoder layer
   ``flowcut_llm_prune_layer`` (1 by default) the last prompt token scores each image's visual tokens and
   ``flowcut_target_num`` of them stay per image. Layers up to that one see (and cache) every token, later layers only
   the kept ones, with compacted positions.

The stock processor is used unchanged: its placeholder count depends on the image size, so the model replaces each
image's placeholder span by its (fewer) tokens itself, and ``generate()`` carries the per-layer-group layout between
steps as ``flowcut_state``. An image whose stock token count is at most ``flowcut_target_num`` is kept whole, exactly
as the stock model sees it; if every image is, or pruning is off, the forward is the stock one.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn
from transformers import LlavaNextForConditionalGeneration, LlavaNextModel
from transformers.cache_utils import DynamicCache
from transformers.modeling_outputs import BaseModelOutputWithPooling
from transformers.models.llava_next.modeling_llava_next import (
    LlavaNextCausalLMOutputWithPast,
    LlavaNextModelOutputWithPast,
    LlavaNextPreTrainedModel,
    get_anyres_image_grid_shape,
    image_size_to_num_patches,
)
from transformers.utils.generic import can_return_tuple, merge_with_config_defaults

from .configuration_flowcut_llava_next import (
    DEFAULT_NEXT_TARGET_NUM,
    NEXT_CONFIG_VALIDATORS,
    NEXT_FIELD_VALIDATORS,
    FlowCutLlavaNextConfig,
)
from .flowcut_clip import check_clip_vision_tower, encode_clip_with_flowcut, feature_layer_index, num_image_patches
from .flowcut_compat import build_output, cache_kwargs, cache_of, image_outputs_of, one_cache
from .flowcut_llm_stage import (
    INPUT_POSITION,
    FlowCutLLMPruner,
    LayerGroupsGenerationMixin,
    LayerGroupsState,
    CONTINUE,
    STOCK,
    WHOLE,
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
    run_with_importance_maps,
    stage0_images,
    vflowopt_prefill,
    vflowopt_running,
    vflowopt_settings,
)

AUTO_MAP = {
    "AutoConfig": "configuration_flowcut_llava_next.FlowCutLlavaNextConfig",
    "AutoModel": "modeling_flowcut_llava_next.FlowCutLlavaNextModel",
    "AutoModelForImageTextToText": "modeling_flowcut_llava_next.FlowCutLlavaNextForConditionalGeneration",
}
# The stock LlavaNextProcessor is used unchanged, so the model's import closure is the whole remote code.
REMOTE_CODE_ENTRY_FILES = ("modeling_flowcut_llava_next.py",)

register_stock_checkpoint_conversion(
    {"FlowCutLlavaNextForConditionalGeneration": "llava_next", "FlowCutLlavaNextModel": "LlavaNextModel"}
)

NEWLINE_SOURCE = (-1, -1)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)  # LLaVA's CLIP image normalisation, for VFlowOpt's entropy term
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


# ------------------------------------------------------------------------------------------------ anyres geometry


def unpadded_window(
    grid_height: int, grid_width: int, image_height: int, image_width: int, *, round_like_transformers: bool
) -> tuple[int, int, int, int]:
    """``(top, bottom, left, right)`` of the part of a ``grid_height x grid_width`` feature grid that shows the image.

    The anyres image was resized to fit the grid and padded on two sides; this drops the padding rows or columns.
    LLaVA (and the authors' FlowCut code) truncates the resized size, transformers rounds it; they differ on a few
    image sizes (e.g. 352x748), so the stock token count uses the rounding and FlowCut's layout the truncation.
    """
    if image_width / image_height > grid_width / grid_height:
        exact = image_height * (grid_width / image_width)
        new_height = int(round(exact, 7)) if round_like_transformers else int(exact)
        padding = (grid_height - new_height) // 2
        return padding, grid_height - padding, 0, grid_width
    exact = image_width * (grid_height / image_height)
    new_width = int(round(exact, 7)) if round_like_transformers else int(exact)
    padding = (grid_width - new_width) // 2
    return 0, grid_height, padding, grid_width - padding


@dataclass(frozen=True)
class AnyresGeometry:
    """How one image is cut into crops and laid out as tokens."""

    num_crops: int
    grid_rows: int
    grid_cols: int
    side: int  # patches per crop side (24 for CLIP-336/14)

    @classmethod
    def of(cls, config, image_size_hw) -> "AnyresGeometry":
        vision = config.vision_config
        size = [int(v) for v in (image_size_hw.tolist() if hasattr(image_size_hw, "tolist") else image_size_hw)]
        crops = image_size_to_num_patches(size, config.image_grid_pinpoints, vision.image_size)
        rows, cols = get_anyres_image_grid_shape(size, config.image_grid_pinpoints, vision.image_size)
        return cls(crops, rows, cols, vision.image_size // vision.patch_size)

    def grid_coordinates(self, crop: torch.Tensor, patch: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Row and column on the full grid of patch ``patch`` of grid crop ``crop`` (1-based: 0 is the base)."""
        crop_row, crop_col = (crop - 1) // self.grid_cols, (crop - 1) % self.grid_cols
        return crop_row * self.side + patch // self.side, crop_col * self.side + patch % self.side


def stock_token_sources(config, image_size_hw) -> torch.Tensor:
    """``[tokens, 2]``: the (crop, patch) each visual token of the stock layout comes from, (-1, -1) for a newline.

    Its length is the stock placeholder count of the image ('default' strategy): the base crop, the unpadded grid
    in raster order with one newline ending each row.
    """
    geometry = AnyresGeometry.of(config, image_size_hw)
    side = geometry.side
    base = torch.stack([torch.zeros(side * side, dtype=torch.long), torch.arange(side * side)], dim=1)
    newline = torch.tensor([NEWLINE_SOURCE])
    if geometry.num_crops == 1:
        return torch.cat([base, newline])
    height, width = int(image_size_hw[0]), int(image_size_hw[1])
    top, bottom, left, right = unpadded_window(
        geometry.grid_rows * side, geometry.grid_cols * side, height, width, round_like_transformers=True
    )
    rows = []
    for row in range(top, bottom):
        columns = torch.arange(left, right)
        crop = 1 + (row // side) * geometry.grid_cols + columns // side
        patch = (row % side) * side + columns % side
        rows.extend([torch.stack([crop, patch], dim=1), newline])
    return torch.cat([base, *rows])


def stock_token_count(config, image_size_hw) -> int:
    """The number of ``<image>`` placeholders the stock LLaVA-NeXT processor emits for an image of this size."""
    return len(stock_token_sources(config, image_size_hw))


def assemble_pruned_image(
    features: torch.Tensor,
    keep_indices: torch.Tensor,
    geometry: AnyresGeometry,
    image_size_hw,
    image_newline: torch.Tensor,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Lays one image's kept crop tokens out as the authors' FlowCut does; returns ``(tokens, sources)``.

    ``features`` is ``[crops, kept, hidden]`` and ``keep_indices`` ``[crops, kept]`` (ascending patch indices).
    """
    device = keep_indices.device
    base_sources = torch.stack([torch.zeros_like(keep_indices[0]), keep_indices[0]], dim=1)
    if geometry.num_crops == 1:
        newline = image_newline[None].to(features.device, features.dtype)
        return torch.cat([features[0], newline]), torch.cat([base_sources, torch.tensor([NEWLINE_SOURCE], device=device)])
    crops = torch.arange(1, geometry.num_crops, device=device)[:, None].expand_as(keep_indices[1:]).reshape(-1)
    patches = keep_indices[1:].reshape(-1)
    rows, columns = geometry.grid_coordinates(crops, patches)
    height, width = int(image_size_hw[0]), int(image_size_hw[1])
    top, bottom, left, right = unpadded_window(
        geometry.grid_rows * geometry.side, geometry.grid_cols * geometry.side, height, width,
        round_like_transformers=False,
    )
    inside = ((rows >= top) & (rows < bottom) & (columns >= left) & (columns < right)).nonzero().squeeze(-1)
    raster = rows[inside] * (geometry.grid_cols * geometry.side) + columns[inside]
    order = inside[raster.argsort()]
    grid_features = features[1:].reshape(-1, features.shape[-1])
    tokens = torch.cat([features[0], grid_features[order.to(features.device)]])
    sources = torch.cat([base_sources, torch.stack([crops[order], patches[order]], dim=1)])
    return tokens, sources


# ------------------------------------------------------------------------------------------------ outputs


@dataclass
class FlowCutNextImageFeaturesOutput(BaseModelOutputWithPooling):
    r"""
    Output of `FlowCutLlavaNextModel.get_image_features`. Every field holds one entry per image.

    last_hidden_state (`list[torch.FloatTensor]`):
        The vision tower's feature-layer output for the image's crops, `[crops, tokens, vision_hidden_size]` (CLS
        first; tokens differ between pruned and whole images, hence a list).
    pooler_output (`list[torch.FloatTensor]`):
        The visual tokens that enter the language model, `[tokens, text_hidden_size]`.
    placeholder_counts (`list[int]`):
        The `<image>` placeholders the stock processor emits for the image; the model replaces them by the tokens.
    keep_indices (`list[torch.LongTensor]`):
        `[crops, kept]`: the patch indices each crop kept in the vision encoder (0-based among a crop's patches, CLS
        excluded, ascending); crop 0 is the base image, then the grid crops row by row.
    token_schedule (`list[list[int]]`):
        The sequence length, CLS included, each vision-encoder layer that ran processed for the image's crops.
    token_sources (`list[torch.LongTensor]`):
        `[tokens, 2]`: the (crop, patch) each token of `pooler_output` comes from, `(-1, -1)` for a newline token.
    prunable (`list[bool]`):
        False for an image kept whole (its stock count is at most the target): its tokens are the stock ones, and the
        LLM stage leaves them alone.
    kept_positions, recycled_positions, importance (`list[torch.Tensor]`):
        VFlowOpt only (`keep_indices`, `token_schedule` and `token_sources` are then None): the positions, among the
        image's stock packed tokens, of the tokens that enter the language model after stage 0 and of those that hold
        a recycled token, and every packed token's importance (newline tokens 1.0).
    """

    placeholder_counts: list[int] | None = None
    keep_indices: list[torch.LongTensor] | None = None
    token_schedule: list[list[int]] | None = None
    token_sources: list[torch.LongTensor] | None = None
    prunable: list[bool] | None = None
    kept_positions: list[torch.LongTensor] | None = None
    recycled_positions: list[torch.LongTensor] | None = None
    importance: list[torch.FloatTensor] | None = None


PER_IMAGE_FIELDS = (
    "last_hidden_state",
    "pooler_output",
    "placeholder_counts",
    "keep_indices",
    "token_schedule",
    "token_sources",
    "prunable",
    "kept_positions",
    "recycled_positions",
    "importance",
)


@dataclass
class FlowCutLlavaNextModelOutputWithPast(LlavaNextModelOutputWithPast):
    r"""
    flowcut_state ([`LayerGroupsState`], *optional*):
        The per-layer-group token layout a later forward call (a decoding step) needs; pass it back as
        `flowcut_state=`. `generate()` does so itself. None when nothing was pruned (the forward was the stock one).
    llm_keep_indices (`list[torch.LongTensor]`, *optional*):
        Per image of the call, the positions within its visual tokens (`pooler_output` order) that the layers after
        the LLM stage see, ascending.
    input_positions (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
        For each position of `last_hidden_state`, the input column it comes from, -1 for padding. None when the output
        is aligned with the input (nothing was pruned).
    """

    image_outputs: FlowCutNextImageFeaturesOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    flowcut_state: LayerGroupsState | None = None
    llm_keep_indices: list[torch.LongTensor] | None = None
    input_positions: torch.LongTensor | None = None


@dataclass
class FlowCutLlavaNextCausalLMOutputWithPast(LlavaNextCausalLMOutputWithPast):
    r"""
    flowcut_state, llm_keep_indices, input_positions:
        See [`FlowCutLlavaNextModelOutputWithPast`]. `logits` follow `input_positions` (the pruned sequence), and so
        does the loss: `labels` are aligned with the input and gathered the same way.
    """

    image_outputs: FlowCutNextImageFeaturesOutput | None = None  # declared for transformers < 5.25, whose classes lack it
    flowcut_state: LayerGroupsState | None = None
    llm_keep_indices: list[torch.LongTensor] | None = None
    input_positions: torch.LongTensor | None = None


# ------------------------------------------------------------------------------------------------ models


class FlowCutLlavaNextModel(LlavaNextModel):
    """[`LlavaNextModel`] that prunes visual tokens in the vision encoder and inside the language model."""

    config_class = FlowCutLlavaNextConfig

    def flowcut_settings(self) -> FlowCutSettings:
        return FlowCutSettings.from_config(self.config, DEFAULT_NEXT_TARGET_NUM)

    def pruning_enabled(self) -> bool:
        if getattr(self.config, "pruning_method", "flowcut") == "vflowopt":
            return vflowopt_running(self.config)
        return self.flowcut_settings().enabled

    def configure_vflowopt(self, enabled: bool | None = None, **settings) -> None:
        """Changes VFlowOpt settings (short names: ``vision_keep``, ``threshold``, ``llm_keeps``, ...) or switches
        it on or off; all values are checked, together, before any is changed. ``config.pruning_method`` says which
        method runs (``flowcut_hf.prune(model, method="vflowopt")`` sets it)."""
        configure_vflowopt_fields(self.config, NEXT_CONFIG_VALIDATORS, enabled=enabled, **settings)

    def configure_flowcut(
        self, target_num: int | None = None, enabled: bool | None = None, llm_prune_layer: int | None = None
    ) -> None:
        """Changes the retained count, the LLM pruning layer and/or switches pruning on or off, on this model."""
        configure_flowcut_fields(
            self.config, NEXT_FIELD_VALIDATORS, target_num=target_num, enabled=enabled, llm_prune_layer=llm_prune_layer
        )

    def check_flowcut_settings(self, settings: FlowCutSettings, vision_feature_select_strategy) -> None:
        NEXT_FIELD_VALIDATORS["flowcut_target_num"](settings.target_num)
        check_clip_vision_tower(self.config.vision_config)
        if vision_feature_select_strategy != "default":
            raise ValueError(
                f"FlowCut on LLaVA-NeXT needs vision_feature_select_strategy='default' (CLS dropped), got "
                f"{vision_feature_select_strategy!r}; set flowcut_enabled=False to run this model unpruned."
            )
        num_layers = self.config.text_config.num_hidden_layers
        if not settings.llm_prune_layer < num_layers - 1:
            raise ValueError(
                f"flowcut_llm_prune_layer={settings.llm_prune_layer} leaves no decoder layer after the LLM stage (the "
                f"language model has {num_layers}); choose 0 to {num_layers - 2} (the paper uses 1)."
            )

    @merge_with_config_defaults
    @can_return_tuple
    def get_image_features(
        self,
        pixel_values: torch.Tensor,
        image_sizes: torch.Tensor,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        **kwargs,
    ) -> FlowCutNextImageFeaturesOutput:
        if self.config.pruning_method == "vflowopt" and self.pruning_enabled():
            return self.vflowopt_image_features(
                pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, **kwargs
            )
        settings = self.flowcut_settings()
        if self.config.pruning_method == "vflowopt":  # switched off: the stock features, in the per-image fields
            settings = FlowCutSettings(enabled=False, target_num=settings.target_num)
        crops_per_image = [
            image_size_to_num_patches(size, self.config.image_grid_pinpoints, self.config.vision_config.image_size)
            for size in image_sizes
        ]
        if pixel_values.dim() == 5:
            pixel_values = torch.cat([pixels[:count] for pixels, count in zip(pixel_values, crops_per_image)])
        elif pixel_values.dim() != 4:
            raise ValueError(f"pixel_values of shape {tuple(pixel_values.shape)}, expect 4 or 5 dimensions")
        crop_pixels = torch.split(pixel_values, crops_per_image)
        stock_counts = [stock_token_count(self.config, size) for size in image_sizes]
        if settings.enabled:
            self.check_flowcut_settings(settings, vision_feature_select_strategy)
        stock_kwargs = dict(
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            return_dict=True,
            **kwargs,
        )
        fields = {name: [] for name in PER_IMAGE_FIELDS}
        for pixels, size, count in zip(crop_pixels, image_sizes, stock_counts):
            keep_whole = not settings.enabled or count <= settings.target_num
            if keep_whole:
                entry = self.whole_image_features(pixels, size, stock_kwargs)
            else:
                entry = self.pruned_image_features(pixels, size, vision_feature_layer, settings)
            entry.update(placeholder_counts=count, prunable=not keep_whole)
            for name, value in entry.items():
                fields[name].append(value)
        return FlowCutNextImageFeaturesOutput(**fields)

    def vflowopt_image_features(
        self, pixel_values, image_sizes, vision_feature_layer, vision_feature_select_strategy, **kwargs
    ) -> FlowCutNextImageFeaturesOutput:
        """VFlowOpt's map and stage 0: the stock features, packed by the stock code, each image cut to its share with
        its dropped tokens recycled per spatial cell. The map is packed exactly as the features are."""
        settings = vflowopt_settings(self.config)
        if vision_feature_select_strategy != "default":
            raise ValueError(
                f"VFlowOpt on LLaVA-NeXT needs vision_feature_select_strategy='default' (CLS dropped), got "
                f"{vision_feature_select_strategy!r}; set vflowopt_enabled=False to run this model unpruned."
            )
        vision = self.config.vision_config
        crops_per_image = [image_size_to_num_patches(size, self.config.image_grid_pinpoints, vision.image_size) for size in image_sizes]
        stock, maps = run_with_importance_maps(
            self.vision_tower, vision_feature_layer, settings.threshold,
            lambda: LlavaNextModel.get_image_features(
                self, pixel_values, image_sizes, vision_feature_layer=vision_feature_layer,
                vision_feature_select_strategy=vision_feature_select_strategy, return_dict=True, **kwargs,
            ),
            leading_tokens=1,
        )
        with torch.no_grad():
            if settings.entropy_weight:
                pixels = pixel_values
                if pixels.dim() == 5:
                    pixels = torch.cat([p[:count] for p, count in zip(pixels, crops_per_image)])
                entropy = crop_entropies(pixels, vision.patch_size, CLIP_MEAN, CLIP_STD)
                maps = combine_importance(maps, entropy.to(maps.device), settings.entropy_weight)
            per_image = [m[..., None] for m in torch.split(maps, crops_per_image)]
            newline = torch.ones(1, device=maps.device)
            packed_maps, _ = self.pack_image_features(per_image, image_sizes, "default", image_newline=newline)
            marked, _ = self.pack_image_features(
                [torch.zeros_like(m) for m in per_image], image_sizes, "default", image_newline=newline
            )
        stage0 = stage0_images(
            stock.pooler_output, [m[:, 0] for m in packed_maps], [m[:, 0] > 0 for m in marked], crops_per_image,
            vision.image_size // vision.patch_size, settings,
        )
        return FlowCutNextImageFeaturesOutput(**vars(stage0))

    def whole_image_features(self, pixels: torch.Tensor, size, stock_kwargs: dict) -> dict:
        """One image's stock features (every patch of every crop, newlines included), in the per-image fields."""
        stock = LlavaNextModel.get_image_features(self, pixels, size[None], **stock_kwargs)
        patches = num_image_patches(self.config.vision_config)
        return {
            "last_hidden_state": stock.last_hidden_state,
            "pooler_output": stock.pooler_output[0],
            "keep_indices": torch.arange(patches, device=pixels.device).expand(len(pixels), -1),
            "token_schedule": [patches + 1] * self.config.vision_config.num_hidden_layers,
            "token_sources": stock_token_sources(self.config, size).to(pixels.device),
        }

    def pruned_image_features(self, pixels: torch.Tensor, size, vision_feature_layer, settings: FlowCutSettings) -> dict:
        """One image's crops through FlowCut's vision stage, laid out as the authors' code lays them out."""
        feature_layer = feature_layer_index(vision_feature_layer, self.config.vision_config.num_hidden_layers)
        hidden, keep, schedule = encode_clip_with_flowcut(
            self.vision_tower, pixels, feature_layer, settings.target_num // 2 + 1, settings
        )
        tokens, sources = assemble_pruned_image(
            self.multi_modal_projector(hidden[:, 1:]), keep, AnyresGeometry.of(self.config, size), size, self.image_newline
        )
        return {
            "last_hidden_state": hidden,
            "pooler_output": tokens,
            "keep_indices": keep,
            "token_schedule": schedule,
            "token_sources": sources,
        }

    def placeholder_mask(self, input_ids, inputs_embeds) -> torch.Tensor:
        return placeholder_positions(self.get_input_embeddings(), self.config.image_token_id, input_ids, inputs_embeds)

    @merge_with_config_defaults
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        use_cache: bool | None = None,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutLlavaNextModelOutputWithPast:
        r"""
        flowcut_state ([`LayerGroupsState`], *optional*):
            The `flowcut_state` of the previous call's output, when continuing from its `cache` (decoding
            steps; `generate()` passes it). With pruning, `position_ids` are rebuilt from the attention mask: the
            positions are compacted within each layer group, as in the authors' code.
        """
        cache = one_cache(cache, past_key_values)
        if (input_ids is None) ^ (inputs_embeds is not None):
            raise ValueError("You must specify exactly one of input_ids or inputs_embeds")
        if pixel_values is not None and mm_encoder_outputs is not None:
            raise ValueError("You cannot specify both pixel_values and mm_encoder_outputs at the same time")
        settings = self.flowcut_settings()
        enabled = self.pruning_enabled()
        stock_kwargs = dict(
            input_ids=input_ids,
            attention_mask=attention_mask,
            position_ids=position_ids,
            **cache_kwargs(cache),
            inputs_embeds=inputs_embeds,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            use_cache=use_cache,
            **kwargs,
        )
        image_output = None
        if enabled:
            image_output = (mm_encoder_outputs or {}).get("image")
            if image_output is None and pixel_values is not None and pixel_values.size(0) > 0:
                image_output = self.get_image_features(
                    pixel_values,
                    image_sizes,
                    vision_feature_layer=vision_feature_layer,
                    vision_feature_select_strategy=vision_feature_select_strategy,
                    return_dict=True,
                )
        outputs = {"image": image_output} if image_output is not None else {}
        new_tokens = (input_ids if input_ids is not None else inputs_embeds).shape[1]
        route = forward_route(enabled, flowcut_state, outputs, cache, new_tokens, attention_mask)
        if route == STOCK:
            return LlavaNextModel.forward(
                self, pixel_values=pixel_values, image_sizes=image_sizes, mm_encoder_outputs=mm_encoder_outputs, **stock_kwargs
            )
        if route == CONTINUE:
            return self.continue_pruned_sequence(
                input_ids, inputs_embeds, attention_mask, cache, use_cache, flowcut_state, settings, kwargs
            )
        if route == WHOLE:
            output = LlavaNextModel.forward(self, mm_encoder_outputs=outputs or None, **stock_kwargs)
            if image_output is None:
                return output
            return build_output(
                FlowCutLlavaNextModelOutputWithPast,
                **output, llm_keep_indices=[torch.arange(len(t)) for t in image_output.pooler_output]
            )
        if self.config.pruning_method == "vflowopt":
            return self.prefill_vflowopt(
                input_ids, inputs_embeds, attention_mask, cache, use_cache, image_output, flowcut_state, kwargs
            )
        return self.prefill_pruned_sequence(
            input_ids, inputs_embeds, attention_mask, cache, use_cache, image_output, flowcut_state, settings, kwargs
        )

    def prefill_vflowopt(
        self, input_ids, inputs_embeds, attention_mask, cache, use_cache, image_output, flowcut_state, kwargs
    ) -> FlowCutLlavaNextModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        placeholders = self.placeholder_mask(input_ids, inputs_embeds)
        self.check_placeholder_counts(placeholders, image_output)
        output = vflowopt_prefill(
            self.language_model, self.config, inputs_embeds, placeholders, attention_mask, image_output,
            vflowopt_settings(self.config), cache, resolved_use_cache(self, self.config.text_config, use_cache),
            flowcut_state.prompt_length if flowcut_state is not None else inputs_embeds.shape[1], **kwargs,
        )
        return self.pruned_output(output, None, image_output)

    def prefill_pruned_sequence(
        self, input_ids, inputs_embeds, attention_mask, cache, use_cache, image_output, flowcut_state, settings, kwargs
    ) -> FlowCutLlavaNextModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        placeholders = self.placeholder_mask(input_ids, inputs_embeds)
        self.check_placeholder_counts(placeholders, image_output)
        prompt_length = flowcut_state.prompt_length if flowcut_state is not None else inputs_embeds.shape[1]
        layout = splice_image_features(
            inputs_embeds,
            placeholders,
            attention_mask,
            image_output.pooler_output,
            image_output.placeholder_counts,
            image_output.prunable,
            prompt_length=prompt_length,
        )
        use_cache = resolved_use_cache(self, self.config.text_config, use_cache)
        if use_cache and cache is None:
            cache = DynamicCache(config=self.config)
        pruner = FlowCutLLMPruner(settings.llm_prune_layer, settings.target_num)
        output = run_layer_groups(
            self.language_model,
            layout,
            pruner.group_starts,
            past_state=None,
            cache=cache,
            use_cache=use_cache,
            dropper=pruner,
            prompt_length=prompt_length,
            **kwargs,
        )
        llm_keep_indices = [
            pruner.keep_indices.get(image, torch.arange(len(tokens), device=tokens.device))
            for image, tokens in enumerate(image_output.pooler_output)
        ]
        return self.pruned_output(output, llm_keep_indices, image_output)

    def continue_pruned_sequence(
        self, input_ids, inputs_embeds, attention_mask, cache, use_cache, flowcut_state, settings, kwargs
    ) -> FlowCutLlavaNextModelOutputWithPast:
        if inputs_embeds is None:
            inputs_embeds = self.get_input_embeddings()(input_ids)
        output = continue_layer_groups(
            self.language_model, inputs_embeds, attention_mask, flowcut_state, cache,
            resolved_use_cache(self, self.config.text_config, use_cache), **kwargs,
        )
        return self.pruned_output(output, None, None)

    @staticmethod
    def pruned_output(output, llm_keep_indices, image_output) -> FlowCutLlavaNextModelOutputWithPast:
        return build_output(
            FlowCutLlavaNextModelOutputWithPast,
            last_hidden_state=output.last_hidden_state,
            cache=cache_of(output),
            hidden_states=output.hidden_states,
            attentions=output.attentions,
            image_outputs=image_output,
            flowcut_state=output.state,
            llm_keep_indices=llm_keep_indices,
            input_positions=output.token_info[INPUT_POSITION],
        )

    def check_placeholder_counts(self, placeholders: torch.Tensor, image_output) -> None:
        check_placeholder_counts(
            placeholders, image_output.placeholder_counts,
            "Each image needs the stock LLaVA-NeXT count for its size: build the inputs with the stock "
            "LlavaNextProcessor of this repo (AutoProcessor.from_pretrained(<repo>)) from the same images, with one "
            "<image> per image in the prompt.",
        )

class FlowCutLlavaNextForConditionalGeneration(
    LayerGroupsGenerationMixin, RemoteCodeSavingMixin, LlavaNextForConditionalGeneration
):
    """[`LlavaNextForConditionalGeneration`] that prunes visual tokens with FlowCut (see [`FlowCutLlavaNextModel`])."""

    config_class = FlowCutLlavaNextConfig
    _auto_class = "AutoModelForImageTextToText"
    flowcut_auto_map = AUTO_MAP
    flowcut_remote_code_entry_files = REMOTE_CODE_ENTRY_FILES
    per_image_fields = PER_IMAGE_FIELDS

    def __init__(self, config: FlowCutLlavaNextConfig):
        # Not super().__init__: it would build (and initialise) a stock LlavaNextModel only to throw it away.
        LlavaNextPreTrainedModel.__init__(self, config)
        self.model = FlowCutLlavaNextModel(config)
        self.lm_head = nn.Linear(config.text_config.hidden_size, config.text_config.vocab_size, bias=False)
        self.post_init()

    def configure_flowcut(
        self, target_num: int | None = None, enabled: bool | None = None, llm_prune_layer: int | None = None
    ) -> None:
        """Changes the retained count, the LLM pruning layer and/or switches pruning on or off, on this model.

        The stock processor needs no change: its placeholder count does not depend on the FlowCut settings.
        """
        self.model.configure_flowcut(target_num=target_num, enabled=enabled, llm_prune_layer=llm_prune_layer)

    def configure_vflowopt(self, enabled: bool | None = None, **settings) -> None:
        """See [`FlowCutLlavaNextModel.configure_vflowopt`]; the stock processor needs no change."""
        self.model.configure_vflowopt(enabled=enabled, **settings)

    @merge_with_config_defaults
    @can_return_tuple
    def forward(
        self,
        input_ids: torch.LongTensor | None = None,
        pixel_values: torch.Tensor | None = None,
        image_sizes: torch.LongTensor | None = None,
        attention_mask: torch.Tensor | None = None,
        position_ids: torch.LongTensor | None = None,
        cache=None,
        past_key_values=None,
        inputs_embeds: torch.Tensor | None = None,
        vision_feature_layer: int | list[int] | None = None,
        vision_feature_select_strategy: str | None = None,
        labels: torch.LongTensor | None = None,
        use_cache: bool | None = None,
        logits_to_keep: int | torch.Tensor = 0,
        mm_encoder_outputs: dict[str, BaseModelOutputWithPooling] | None = None,
        flowcut_state: LayerGroupsState | None = None,
        **kwargs,
    ) -> FlowCutLlavaNextCausalLMOutputWithPast:
        r"""
        flowcut_state ([`LayerGroupsState`], *optional*):
            See [`FlowCutLlavaNextModel.forward`].
        labels (`torch.LongTensor` of shape `(batch_size, sequence_length)`, *optional*):
            Aligned with `input_ids`, as for the stock model; when tokens are pruned they are gathered with the
            sequence (see `input_positions` in the output), so the loss is that of the pruned sequence.
        """
        cache = one_cache(cache, past_key_values)
        outputs = self.model(
            input_ids,
            pixel_values=pixel_values,
            image_sizes=image_sizes,
            vision_feature_layer=vision_feature_layer,
            vision_feature_select_strategy=vision_feature_select_strategy,
            attention_mask=attention_mask,
            position_ids=position_ids,
            cache=cache,
            inputs_embeds=inputs_embeds,
            use_cache=use_cache,
            mm_encoder_outputs=mm_encoder_outputs,
            flowcut_state=flowcut_state,
            return_dict=True,
            **kwargs,
        )
        logits, loss = self.logits_and_loss(outputs, labels, logits_to_keep, **kwargs)
        return build_output(
            FlowCutLlavaNextCausalLMOutputWithPast,
            loss=loss,
            logits=logits,
            cache=cache_of(outputs),
            hidden_states=outputs.hidden_states,
            attentions=outputs.attentions,
            image_outputs=image_outputs_of(outputs),
            flowcut_state=getattr(outputs, "flowcut_state", None),
            llm_keep_indices=getattr(outputs, "llm_keep_indices", None),
            input_positions=getattr(outputs, "input_positions", None),
        )


__all__ = [
    "AUTO_MAP",
    "FlowCutLlavaNextCausalLMOutputWithPast",
    "FlowCutLlavaNextForConditionalGeneration",
    "FlowCutLlavaNextModel",
    "FlowCutLlavaNextModelOutputWithPast",
    "FlowCutNextImageFeaturesOutput",
    "stock_token_count",
    "stock_token_sources",
    "unpadded_window",
]
