"""Tiny, fully offline LLaVA-1.5- and LLaVA-NeXT-shaped models, tokenizers and processors.

They use the real architectures (CLIP ViT at 336 px with 14 px patches, so 576 patches per crop; a Llama text model;
NeXT's anyres grid) with random weights, so the demo, the tests and the benchmark run without downloading anything.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers import (
    CLIPImageProcessorPil,
    LlavaConfig,
    LlavaForConditionalGeneration,
    LlavaNextConfig,
    LlavaNextForConditionalGeneration,
    LlavaNextImageProcessorPil,
    LlavaNextProcessor,
    LlavaProcessor,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from .presets import tiny_llava_config, tiny_llava_next_config, tiny_qwen_vl_config

CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]

LLAVA_15_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }} "
    "{% else %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
IMAGE_TOKEN = "<image>"


def byte_level_tokenizer(
    added_tokens: list[str], eos_token: str, extra_special_tokens: dict[str, str], chat_template: str
) -> TokenizersBackend:
    """A byte-level tokenizer (every byte is a token, no merges): ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3,
    the 256 bytes, then ``added_tokens`` (special) in order. Left padding, as generation needs."""
    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + byte_alphabet + added_tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = TokenizersBackend(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token=eos_token,
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra_special_tokens,
        padding_side="left",
        chat_template=chat_template,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": added_tokens})
    return tokenizer


def build_tiny_tokenizer() -> TokenizersBackend:
    """A byte-level tokenizer with LLaVA's special tokens; ``<image>`` comes last (260)."""
    return byte_level_tokenizer([IMAGE_TOKEN], "</s>", {"image_token": IMAGE_TOKEN}, LLAVA_15_CHAT_TEMPLATE)


def build_tiny_processor(
    tokenizer: TokenizersBackend | None = None, image_size: int = 336, vision_feature_select_strategy: str = "default"
) -> LlavaProcessor:
    """A stock LlavaProcessor around :func:`build_tiny_tokenizer`, with LLaVA-1.5's CLIP image preprocessing."""
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
        chat_template=LLAVA_15_CHAT_TEMPLATE,
    )


# Random CLIP weights give near-uniform attention, so FlowCut would prune almost nothing before its final cut.
# Scaling the query and key projection weights makes CLS attention peaked, as in a trained CLIP; at 16 the schedule
# looks like the one the authors' code produced on a random CLIP (577 -> 490 -> 424 -> ... -> 65).
QK_WEIGHT_SCALE = 16.0


def with_tokenizer_ids(config, tokenizer: TokenizersBackend):
    """Sets ``config``'s image, pad, bos and eos token ids to ``tokenizer``'s, in place, and returns it."""
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = config.text_config
    text_config.pad_token_id = tokenizer.pad_token_id
    text_config.bos_token_id = tokenizer.bos_token_id
    text_config.eos_token_id = tokenizer.eos_token_id
    return config


def set_generation_token_ids(model, tokenizer: TokenizersBackend) -> None:
    """``generate()`` pads, stops and starts with ``tokenizer``'s special tokens."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def build_random_model(model_class, config, tokenizer: TokenizersBackend, seed: int, qk_weight_scale: float):
    """A random ``model_class(config)`` in eval mode, with sharpened vision attention and the tokenizer's ids."""
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"the text model's vocabulary ({config.text_config.vocab_size}) is smaller than the tokenizer's")
    with_tokenizer_ids(config, tokenizer)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, parameter in model.model.vision_tower.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(qk_weight_scale)
    set_generation_token_ids(model, tokenizer)
    return model


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

    ``overrides`` go to :func:`flowcut_hf.presets.tiny_llava_config`.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = tiny_llava_config(vocab_size=len(tokenizer), image_token_index=len(tokenizer) - 1, **overrides)
    return build_random_llava(config, tokenizer, seed=seed)


def build_tiny_next_processor(tokenizer: TokenizersBackend | None, config: LlavaNextConfig) -> LlavaNextProcessor:
    """A stock LlavaNextProcessor around :func:`build_tiny_tokenizer`, with LLaVA-NeXT's anyres preprocessing."""
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
        chat_template=LLAVA_15_CHAT_TEMPLATE,
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
    """A random tiny stock ``LlavaNextForConditionalGeneration`` (NeXT geometry) and its stock processor.

    ``overrides`` go to :func:`flowcut_hf.presets.tiny_llava_next_config`.
    """
    tokenizer = tokenizer if tokenizer is not None else build_tiny_tokenizer()
    config = tiny_llava_next_config(vocab_size=len(tokenizer), image_token_index=len(tokenizer) - 1, **overrides)
    return build_random_llava_next(config, tokenizer, seed=seed)


def synthetic_image(seed: int = 0, size: tuple[int, int] = (336, 336)) -> Image.Image:
    """A deterministic RGB test image: smooth colour gradients plus a few bright blobs."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 37.0)], axis=-1) * 160
    for _ in range(4):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(height // 16, height // 6)
        blob = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[blob] = rng.integers(0, 256, size=3)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


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


def build_tiny_qwen_tokenizer() -> TokenizersBackend:
    """A byte-level tokenizer like :func:`build_tiny_tokenizer`, with Qwen-VL's vision tokens after the bytes."""
    special = {"image_token": "<|image_pad|>", "video_token": "<|video_pad|>"}
    return byte_level_tokenizer(QWEN_SPECIAL_TOKENS, "<|im_end|>", special, QWEN_CHAT_TEMPLATE)


def image_only_processor_class(stock_class: type) -> type:
    """``stock_class`` (a processor with a video processor) usable without one: without torchvision transformers
    cannot even look the video processor class up, so the tiny processors leave it out."""

    class ImageOnlyProcessor(stock_class):
        def check_argument_for_proper_class(self, attribute_name, arg):
            if attribute_name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(attribute_name, arg)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = stock_class.__name__
    return ImageOnlyProcessor


TINY_QWEN_PIXELS = {"shortest_edge": 4 * 28 * 28, "longest_edge": 64 * 28 * 28}  # 4 to 64 merge units per image
STOCK_QWEN_PIXELS = {"shortest_edge": 56 * 56, "longest_edge": 28 * 28 * 16384}  # Qwen2-VL-7B-Instruct's defaults


def build_tiny_qwen_processor(
    tokenizer: TokenizersBackend | None = None, version: str = "2", pixels: dict = TINY_QWEN_PIXELS
):
    """The stock Qwen2-VL (or Qwen2.5-VL) processor around :func:`build_tiny_qwen_tokenizer`; by default with a
    pixel budget small enough for CPU tests (at most 64 merge units of 28 x 28 px per image).

    It has no video processor (the stock one needs torchvision); :func:`tiny_qwen_video_inputs` builds video inputs.
    """
    from transformers import Qwen2_5_VLProcessor, Qwen2VLImageProcessorPil, Qwen2VLProcessor

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
    with sharpened ViT attention."""
    from transformers import Qwen2_5_VLConfig, Qwen2_5_VLForConditionalGeneration, Qwen2VLForConditionalGeneration

    for holder in (config, config.text_config):
        holder.pad_token_id = tokenizer.pad_token_id
        holder.bos_token_id = tokenizer.bos_token_id
        holder.eos_token_id = tokenizer.eos_token_id
    model_class = Qwen2_5_VLForConditionalGeneration if isinstance(config, Qwen2_5_VLConfig) else Qwen2VLForConditionalGeneration
    torch.manual_seed(seed)
    model = model_class(config).eval()
    with torch.no_grad():
        for name, parameter in model.model.visual.named_parameters():
            if name.endswith("attn.qkv.weight"):
                # Scale the query and key rows only (the value rows stay): the same sharpening as CLIP's q/k.
                third = parameter.shape[0] // 3
                parameter[: 2 * third].mul_(qk_weight_scale)
    set_generation_token_ids(model, tokenizer)
    return model


def build_tiny_qwen_vl(version: str = "2", seed: int = 0, qk_weight_scale: float = QK_WEIGHT_SCALE):
    """A random tiny stock ``Qwen2VLForConditionalGeneration`` (``version="2"``) or
    ``Qwen2_5_VLForConditionalGeneration`` (``"2.5"``) with the real vision geometry, and its stock processor."""
    tokenizer = build_tiny_qwen_tokenizer()
    config = tiny_qwen_vl_config(version, vocab_size=len(tokenizer), **qwen_token_ids(tokenizer))
    model = build_random_qwen_vl(config, tokenizer, seed, qk_weight_scale)
    return model, build_tiny_qwen_processor(tokenizer, version)


SIGLIP_IMAGE_MEAN = SIGLIP_IMAGE_STD = [0.5, 0.5, 0.5]
ONEVISION_CHAT_TEMPLATE = QWEN_CHAT_TEMPLATE.replace("<|vision_start|><|image_pad|><|vision_end|>", "<image>\n").replace(
    "<|vision_start|><|video_pad|><|vision_end|>", "<video>\n"
)


def build_tiny_onevision_tokenizer() -> TokenizersBackend:
    """A byte-level tokenizer with LLaVA-OneVision's chat tokens and ``<image>`` / ``<video>`` placeholders."""
    added = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    return byte_level_tokenizer(added, "<|im_end|>", {"image_token": "<image>", "video_token": "<video>"}, ONEVISION_CHAT_TEMPLATE)


# SigLIP's random attention needs less sharpening than CLIP's for a realistic map: at 2 the importance spans five orders
# of magnitude, and VFlowOpt's 10% preset recycles into the spec's 20 cells on the square 2x2-grid image.
ONEVISION_QK_WEIGHT_SCALE = 2.0


def build_tiny_llava_onevision(seed: int = 0, qk_weight_scale: float = ONEVISION_QK_WEIGHT_SCALE):
    """A random tiny stock ``LlavaOnevisionForConditionalGeneration`` with the real geometry (SigLIP at 384 px / 14 px:
    729 patches per crop, 26 layers; anyres_max_9 with the standard pinpoints; a 28-layer Qwen2), and its stock
    processor (images only, see :func:`image_only_processor_class`)."""
    from .presets import tiny_llava_onevision_config

    return build_random_llava_onevision(tiny_llava_onevision_config, seed, qk_weight_scale)


def build_random_llava_onevision(config_for, seed: int = 0, qk_weight_scale: float = ONEVISION_QK_WEIGHT_SCALE):
    """A random stock ``LlavaOnevisionForConditionalGeneration`` for ``config_for(vocab_size=..., <token ids>)`` and
    its stock processor (images only)."""
    from transformers import LlavaOnevisionForConditionalGeneration, LlavaOnevisionImageProcessorPil, LlavaOnevisionProcessor

    tokenizer = build_tiny_onevision_tokenizer()
    config = config_for(
        vocab_size=len(tokenizer),
        image_token_id=tokenizer.convert_tokens_to_ids("<image>"),
        video_token_id=tokenizer.convert_tokens_to_ids("<video>"),
    )
    for holder in (config, config.text_config):
        holder.pad_token_id, holder.bos_token_id, holder.eos_token_id = (
            tokenizer.pad_token_id, tokenizer.bos_token_id, tokenizer.eos_token_id,
        )
    torch.manual_seed(seed)
    model = LlavaOnevisionForConditionalGeneration(config).eval()
    with torch.no_grad():
        for name, parameter in model.model.vision_tower.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(qk_weight_scale)
    set_generation_token_ids(model, tokenizer)
    image_processor = LlavaOnevisionImageProcessorPil(
        image_grid_pinpoints=config.image_grid_pinpoints, image_mean=SIGLIP_IMAGE_MEAN, image_std=SIGLIP_IMAGE_STD,
        size={"height": 384, "width": 384},
    )
    processor = image_only_processor_class(LlavaOnevisionProcessor)(
        image_processor=image_processor, tokenizer=tokenizer, video_processor=None, num_image_tokens=729,
        vision_feature_select_strategy="full", chat_template=ONEVISION_CHAT_TEMPLATE,
    )
    return model, processor
