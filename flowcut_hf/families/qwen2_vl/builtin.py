"""Qwen2-VL's and Qwen2.5-VL's built-in random models: the real vision geometry (14 px patches, 2-frame temporal
patches, 2x2 merge units, 32 blocks; Qwen2.5-VL's 112 px windows and full-attention blocks 7, 15, 23, 31) at toy
widths, and Qwen2-VL-7B at 1/4 width."""

from __future__ import annotations

import torch
from transformers import (
    Qwen2_5_VLConfig,
    Qwen2_5_VLForConditionalGeneration,
    Qwen2_5_VLProcessor,
    Qwen2VLConfig,
    Qwen2VLForConditionalGeneration,
    Qwen2VLImageProcessorPil,
    Qwen2VLProcessor,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from ...tiny import QK_WEIGHT_SCALE, byte_level_tokenizer, image_only_processor_class, set_generation_token_ids
from ...tiny import sharpen_vision_attention

QWEN_VISION_GEOMETRY = dict(depth=32, patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
QWEN2_5_WINDOW_GEOMETRY = dict(window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
QWEN_TOKEN_IDS = dict(image_token_id=0, video_token_id=0, vision_start_token_id=0, vision_end_token_id=0)

QWEN_SPECIAL_TOKENS = ["<|vision_start|>", "<|vision_end|>", "<|image_pad|>", "<|video_pad|>", "<|im_start|>", "<|im_end|>"]
QWEN_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<|vision_start|><|image_pad|><|vision_end|>"
    "{% elif item['type'] == 'video' %}<|vision_start|><|video_pad|><|vision_end|>"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
TINY_QWEN_PIXELS = {"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}  # 4 to 64 merge units per image
STOCK_QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}  # Qwen2-VL-7B-Instruct's defaults


def tiny_qwen_vl_config(version: str = "2", vocab_size: int = 300, **token_ids: int):
    """A tiny ``Qwen2VLConfig`` (``version="2"``) or ``Qwen2_5_VLConfig`` (``"2.5"``) with the real vision geometry.

    ``token_ids`` sets ``image_token_id``, ``video_token_id``, ``vision_start_token_id`` and ``vision_end_token_id``.
    """
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=4,
        num_attention_heads=4,
        num_key_value_heads=2,
        max_position_embeddings=4096,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [2, 3, 3]},
        bos_token_id=None,  # the stock defaults (151643, ...) lie outside a tiny vocabulary
        eos_token_id=None,
    )
    ids = {**QWEN_TOKEN_IDS, **token_ids}
    if version == "2":
        vision_config = dict(embed_dim=32, hidden_size=64, mlp_ratio=2, num_heads=2, **QWEN_VISION_GEOMETRY)
        return Qwen2VLConfig(vision_config=vision_config, text_config=text_config, bos_token_id=None, eos_token_id=None, **ids)
    if version == "2.5":
        vision_config = dict(
            hidden_size=32, intermediate_size=64, out_hidden_size=64, num_heads=2, **QWEN_VISION_GEOMETRY,
            **QWEN2_5_WINDOW_GEOMETRY,
        )
        return Qwen2_5_VLConfig(
            vision_config=vision_config, text_config=text_config, bos_token_id=None, eos_token_id=None, **ids
        )
    raise ValueError(f"Qwen-VL version must be '2' or '2.5', got {version!r}")


def bench_preset_qwen2_vl_config(vocab_size: int = 300, **token_ids: int):
    """Qwen2-VL-7B at 1/4 width, full depth and full token geometry, for ``flowcut-hf bench --family qwen2-vl``.

    ======================  ====================  ===============
    component               Qwen2-VL-7B           this preset
    ======================  ====================  ===============
    ViT blocks / heads      32 / 16               32 / 4
    ViT width / MLP         1280 / 5120           320 / 1280
    LLM layers / heads      28 / 28 (kv 4)        28 / 7 (kv 1)
    LLM width / MLP         3584 / 18944          896 / 4736
    ======================  ====================  ===============

    Head widths are preserved (ViT 80, LLM 128), and so is M-RoPE's split of the rotary dimensions (16/24/24).
    """
    ids = {**QWEN_TOKEN_IDS, **token_ids}
    vision_config = dict(embed_dim=320, hidden_size=896, mlp_ratio=4, num_heads=4, **QWEN_VISION_GEOMETRY)
    text_config = dict(
        vocab_size=vocab_size,
        hidden_size=896,
        intermediate_size=4736,
        num_hidden_layers=28,
        num_attention_heads=7,
        num_key_value_heads=1,
        max_position_embeddings=32768,
        rope_parameters={"rope_type": "default", "rope_theta": 1000000.0, "mrope_section": [16, 24, 24]},
        bos_token_id=None,
        eos_token_id=None,
    )
    return Qwen2VLConfig(vision_config=vision_config, text_config=text_config, bos_token_id=None, eos_token_id=None, **ids)


def build_tiny_qwen_tokenizer() -> TokenizersBackend:
    """A byte-level tokenizer (:func:`flowcut_hf.tiny.byte_level_tokenizer`) with Qwen-VL's vision tokens after the
    bytes."""
    special = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    return byte_level_tokenizer(QWEN_SPECIAL_TOKENS, "<|im_end|>", special, QWEN_CHAT_TEMPLATE)


def build_tiny_qwen_processor(
    tokenizer: TokenizersBackend | None = None, version: str = "2", pixels: dict = TINY_QWEN_PIXELS
):
    """The stock Qwen2-VL (or Qwen2.5-VL) processor around :func:`build_tiny_qwen_tokenizer`; by default with a
    pixel budget small enough for CPU tests (at most 64 merge units of 28 x 28 px per image).

    It has no video processor (the stock one needs torchvision); tests build video inputs themselves.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tiny_qwen_tokenizer()
    stock_class = Qwen2VLProcessor if version == "2" else Qwen2_5_VLProcessor
    ImageOnlyProcessor = image_only_processor_class(stock_class)
    return ImageOnlyProcessor(
        image_processor=Qwen2VLImageProcessorPil(size=pixels),
        tokenizer=tokenizer,
        video_processor=None,
        chat_template=QWEN_CHAT_TEMPLATE,
    )


def qwen_token_ids(tokenizer: TokenizersBackend) -> dict[str, int]:
    """The config's vision token ids for :func:`build_tiny_qwen_tokenizer`."""
    return {
        name: tokenizer.convert_tokens_to_ids(token)
        for name, token in (
            ("image_token_id", "<|image_pad|>"),
            ("video_token_id", "<|video_pad|>"),
            ("vision_start_token_id", "<|vision_start|>"),
            ("vision_end_token_id", "<|vision_end|>"),
        )
    }


def build_random_qwen_vl(config, tokenizer: TokenizersBackend, seed: int = 0, qk_weight_scale: float = QK_WEIGHT_SCALE):
    """A random stock Qwen2-VL / Qwen2.5-VL model for ``config`` (whose token ids match ``tokenizer``), eval mode,
    with sharpened ViT attention (the query and key rows of the fused projection, as CLIP's q/k elsewhere)."""
    for holder in (config, config.text_config):
        holder.pad_token_id = tokenizer.pad_token_id
        holder.bos_token_id = tokenizer.bos_token_id
        holder.eos_token_id = tokenizer.eos_token_id
    model_class = Qwen2_5_VLForConditionalGeneration if isinstance(config, Qwen2_5_VLConfig) else Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config).eval()
    sharpen_vision_attention(model.model.visual, qk_weight_scale)
    set_generation_token_ids(model, tokenizer)
    return model


def build_tiny_qwen_vl(version: str = "2", seed: int = 0, qk_weight_scale: float = QK_WEIGHT_SCALE):
    """A random tiny stock ``Qwen2VLForConditionalGeneration`` (``version="2"``) or
    ``Qwen2_5_VLForConditionalGeneration`` (``"2.5"``) with the real vision geometry, and its stock processor."""
    tokenizer = build_tiny_qwen_tokenizer()
    config = tiny_qwen_vl_config(version, vocab_size=len(tokenizer), **qwen_token_ids(tokenizer))
    model = build_random_qwen_vl(config, tokenizer, seed, qk_weight_scale)
    return model, build_tiny_qwen_processor(tokenizer, version)


def builtin_model(version: str, size: str, seed: int = 0):
    """The built-in model of ``size`` of Qwen-VL ``version`` (the 1/4-width one has Qwen2-VL-7B's geometry)."""
    if size == "tiny":
        return build_tiny_qwen_vl(version, seed=seed)
    if version != "2":
        raise ValueError("the 'builtin' Qwen model has Qwen2-VL-7B geometry: use the qwen2-vl family (or size 'tiny')")
    tokenizer = build_tiny_qwen_tokenizer()
    config = bench_preset_qwen2_vl_config(vocab_size=len(tokenizer), **qwen_token_ids(tokenizer))
    return build_random_qwen_vl(config, tokenizer, seed), build_tiny_qwen_processor(tokenizer, "2", STOCK_QWEN_PIXELS)
