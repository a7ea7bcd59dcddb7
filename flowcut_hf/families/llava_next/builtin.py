"""LLaVA-NeXT's built-in random models: the LLaVA-NeXT-7B (vicuna) geometry at 1/4 width and at toy widths."""

from __future__ import annotations

from transformers import LlavaNextConfig, LlavaNextForConditionalGeneration, LlavaNextImageProcessorPil, LlavaNextProcessor
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from ...presets import (
    CLIP_L336_LAYERS, CLIP_L336_PATCHES, VICUNA_IMAGE_TOKEN_INDEX, quarter_clip_l336_config, quarter_vicuna_7b_config,
    toy_clip_l336_config, toy_llama_config,
)
from ...tiny import (
    CLIP_IMAGE_MEAN, CLIP_IMAGE_STD, QK_WEIGHT_SCALE, USER_ASSISTANT_CHAT_TEMPLATE, build_random_model, build_tiny_tokenizer,
)

# llava-hf/llava-v1.6-*: (height, width) resolutions an image may be tiled to, in 336 px crops.
GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]


def next_config(vision_config, text_config, image_token_index: int) -> LlavaNextConfig:
    """The LLaVA-NeXT config of a CLIP-L/336 tower and a language model, with the anyres grid of llava-v1.6."""
    return LlavaNextConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_index,
        image_seq_length=CLIP_L336_PATCHES,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
        image_grid_pinpoints=GRID_PINPOINTS,
    )


def bench_preset_next_config() -> LlavaNextConfig:
    """LLaVA-NeXT-7B (llava-v1.6-vicuna-7b) at 1/4 width, full depth and full token geometry: CLIP-L/336 and
    Vicuna-7B at 1/4 width (:mod:`flowcut_hf.presets`) and NeXT's anyres grid, so a 672x672 image becomes 5 crops,
    2880 patches (the paper's "2880 tokens"), and 2928 visual tokens for the stock model (576 base + 48x48 grid + 48
    newlines)."""
    return next_config(quarter_clip_l336_config(), quarter_vicuna_7b_config(), VICUNA_IMAGE_TOKEN_INDEX)


def tiny_llava_next_config(
    vocab_size: int = 256, image_token_index: int | None = None, *, num_text_layers: int = 4,
    num_vision_layers: int = CLIP_L336_LAYERS,
) -> LlavaNextConfig:
    """A tiny LLaVA-NeXT config for fast CPU tests: the real crops at toy widths, NeXT's anyres grid. The language
    model has 4 layers by default, so FlowCut's LLM stage (after layer 1) leaves two layers that see only the kept
    tokens."""
    if image_token_index is None:
        image_token_index = vocab_size - 1
    return next_config(
        toy_clip_l336_config(num_vision_layers), toy_llama_config(vocab_size, image_token_index, num_text_layers),
        image_token_index,
    )


def build_tiny_next_processor(tokenizer: TokenizersBackend | None, config: LlavaNextConfig) -> LlavaNextProcessor:
    """A stock LlavaNextProcessor around :func:`flowcut_hf.tiny.build_tiny_tokenizer`, with the anyres
    preprocessing."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    image_size = config.vision_config.image_size
    image_processor = LlavaNextImageProcessorPil(
        size={"shortest_edge": image_size},
        crop_size={"height": image_size, "width": image_size},
        image_grid_pinpoints=config.image_grid_pinpoints,
        image_mean=CLIP_IMAGE_MEAN,
        image_std=CLIP_IMAGE_STD,
    )
    return LlavaNextProcessor(
        image_processor=image_processor,
        tokenizer=tokenizer,
        patch_size=config.vision_config.patch_size,
        vision_feature_select_strategy=config.vision_feature_select_strategy,
        num_additional_image_tokens=1,
        chat_template=USER_ASSISTANT_CHAT_TEMPLATE,
    )


def build_random_llava_next(
    config: LlavaNextConfig,
    tokenizer: TokenizersBackend | None = None,
    seed: int = 0,
    qk_weight_scale: float = QK_WEIGHT_SCALE,
):
    """A random stock ``LlavaNextForConditionalGeneration`` for ``config`` and a matching stock processor."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    model = build_random_model(LlavaNextForConditionalGeneration, config, tokenizer, seed, qk_weight_scale)
    return model, build_tiny_next_processor(tokenizer, config)


def build_tiny_llava_next(seed: int = 0, tokenizer: TokenizersBackend | None = None, **overrides):
    """A random tiny stock ``LlavaNextForConditionalGeneration`` and its stock processor; ``overrides`` go to
    :func:`tiny_llava_next_config`."""
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = tiny_llava_next_config(vocab_size=len(tokenizer), image_token_index=len(tokenizer) - 1, **overrides)
    return build_random_llava_next(config, tokenizer, seed=seed)


def builtin_model(size: str, seed: int = 0):
    """The family's built-in model of ``size`` (see :meth:`flowcut_hf.family.FlowCutFamily.builtin_model`)."""
    return build_tiny_llava_next(seed=seed) if size == "tiny" else build_random_llava_next(bench_preset_next_config(), seed=seed)
