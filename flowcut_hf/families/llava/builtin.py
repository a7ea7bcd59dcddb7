"""LLaVA-1.5's built-in random models: its 7B geometry at 1/4 width (the bench's) and at toy widths (the tests')."""

from __future__ import annotations

import json
from pathlib import Path

from safetensors.torch import load_file, save_file
from transformers import CLIPImageProcessorPil, LlavaConfig, LlavaForConditionalGeneration, LlavaProcessor
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from ...presets import (
    CLIP_L336_LAYERS, CLIP_L336_PATCHES, VICUNA_IMAGE_TOKEN_INDEX, quarter_clip_l336_config, quarter_vicuna_7b_config,
    toy_clip_l336_config, toy_llama_config,
)
from ...tiny import (
    CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, QK_WEIGHT_SCALE, USER_ASSISTANT_CHAT_TEMPLATE, build_random_model, build_tiny_tokenizer,
)


def bench_preset_config() -> LlavaConfig:
    """LLaVA-1.5-7B at 1/4 width, full depth and full token geometry.

    ======================  ===============  ===============
    component               LLaVA-1.5-7B     this preset
    ======================  ===============  ===============
    CLIP layers / heads     24 / 16          24 / 4
    CLIP hidden / MLP       1024 / 4096      256 / 1024
    Llama layers / heads    32 / 32 (kv 32)  32 / 8 (kv 8)
    Llama hidden / MLP      4096 / 11008     1024 / 2752
    projector               1024->4096       256->1024
    ======================  ===============  ===============

    Head widths are preserved (CLIP 64, Llama 128), so attention kernels see the same per-head shapes as on the real
    model.
    """
    return LlavaConfig(
        vision_config=quarter_clip_l336_config(),
        text_config=quarter_vicuna_7b_config(),
        image_token_index=VICUNA_IMAGE_TOKEN_INDEX,
        image_seq_length=CLIP_L336_PATCHES,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def tiny_llava_config(
    num_vision_layers: int = CLIP_L336_LAYERS,
    vocab_size: int = 256,
    image_token_index: int | None = None,
    *,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    num_text_layers: int = 2,
) -> LlavaConfig:
    """A tiny LLaVA-1.5-shaped config for fast CPU tests: the real token geometry (336 px, 14 px patches -> 576
    patches + CLS), so FlowCut's schedules and ``target_num`` values are the real ones, at toy widths.

    Args:
        num_vision_layers: CLIP depth (LLaVA-1.5: 24).
        vocab_size: Llama vocabulary size.
        image_token_index: id of the ``<image>`` placeholder; defaults to ``vocab_size - 1``. It must lie inside the
            vocabulary because the placeholder ids go through the embedding table before image features replace them.
        vision_feature_layer, vision_feature_select_strategy: as in ``LlavaConfig``.
        num_text_layers: Llama depth.
    """
    if image_token_index is None:
        image_token_index = vocab_size - 1
    if not 0 <= image_token_index < vocab_size:
        raise ValueError(f"image_token_index {image_token_index} must lie in [0, {vocab_size})")
    return LlavaConfig(
        vision_config=toy_clip_l336_config(num_vision_layers),
        text_config=toy_llama_config(vocab_size, image_token_index, num_text_layers),
        image_token_index=image_token_index,
        # The processor expands <image> to this many placeholders; "full" keeps CLS.
        image_seq_length=CLIP_L336_PATCHES + (vision_feature_select_strategy == "full"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def build_tiny_processor(
    tokenizer: TokenizersBackend | None = None, image_size: int = 336, vision_feature_select_strategy: str = "default"
) -> LlavaProcessor:
    """A stock LlavaProcessor around :func:`flowcut_hf.tiny.build_tiny_tokenizer`, with LLaVA-1.5's CLIP image
    preprocessing."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    image_processor = CLIPImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD,
    )
    return LlavaProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=14,
        vision_feature_select_strategy=vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=USER_ASSISTANT_CHAT_TEMPLATE,
    )


def build_random_llava(
    config: LlavaConfig,
    tokenizer: TokenizersBackend | None = None,
    seed: int = 0,
    qk_weight_scale: float = QK_WEIGHT_SCALE,
):
    """A random stock ``LlavaForConditionalGeneration`` for ``config`` and a matching stock processor."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    model = build_random_model(LlavaForConditionalGeneration, config, tokenizer, seed, qk_weight_scale)
    return model, build_tiny_processor(tokenizer, vision_feature_select_strategy=config.vision_feature_select_strategy)


def build_tiny_llava(seed: int = 0, tokenizer: TokenizersBackend | None = None, **overrides):
    """A random tiny stock ``LlavaForConditionalGeneration`` (LLaVA-1.5 geometry) and its stock processor.

    ``overrides`` go to :func:`tiny_llava_config`.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = tiny_llava_config(vocab_size=len(tokenizer), image_token_index=len(tokenizer) - 1, **overrides)
    return build_random_llava(config, tokenizer, seed=seed)


def builtin_model(size: str, seed: int = 0):
    """The family's built-in model of ``size`` (see :meth:`flowcut_hf.family.FlowCutFamily.builtin_model`)."""
    # Four decoder layers, so that VFlowOpt's LLM stages (flowcut-hf search) have layers to act on.
    return build_tiny_llava(seed=seed, num_text_layers=4) if size == "tiny" else build_random_llava(bench_preset_config(), seed=seed)


def hub_weight_name(name: str) -> str:
    """A LLaVA weight's name as llava-hf checkpoints on the Hub hold it (the vision tower under ``vision_model.``)."""
    prefix, hub_prefix = "vision_tower.", "vision_tower.vision_model."
    return hub_prefix + name[len(prefix):] if name.startswith(prefix) and not name.startswith(hub_prefix) else name


def save_in_hub_layout(model, processor, folder: Path) -> Path:
    """Saves ``model`` and ``processor`` as ``save_pretrained`` does, with the weights under the names llava-hf
    checkpoints on the Hub use (:func:`hub_weight_name`; transformers 5 writes a model built from scratch with its
    vision tower as ``vision_tower.*``). transformers loads both; vLLM 0.32 only the Hub's, so a built-in model meant
    for vLLM is saved this way."""
    folder = Path(folder)
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    for shard in sorted(folder.glob("*.safetensors")):
        tensors = load_file(shard)
        if any(hub_weight_name(name) != name for name in tensors):
            save_file({hub_weight_name(name): tensor for name, tensor in tensors.items()}, shard, metadata={"format": "pt"})
    index = folder / "model.safetensors.index.json"
    if index.exists():
        data = json.loads(index.read_text())
        data["weight_map"] = {hub_weight_name(name): shard for name, shard in data["weight_map"].items()}
        index.write_text(json.dumps(data, indent=2) + "\n")
    return folder
