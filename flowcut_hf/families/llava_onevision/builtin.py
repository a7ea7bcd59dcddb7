"""LLaVA-OneVision's built-in random models: LLaVA-OneVision-7B's geometry (SigLIP at 384 px / 14 px, 729 patches
per crop, 26 layers, no CLS; anyres_max_9 with the standard pinpoints; a 28-layer Qwen2) at toy widths and at 1/4
width."""

from __future__ import annotations

import torch
from transformers import (
    LlavaOnevisionConfig,
    LlavaOnevisionForConditionalGeneration,
    LlavaOnevisionImageProcessorPil,
    LlavaOnevisionProcessor,
)
from transformers.tokenization_utils_tokenizers import TokenizersBackend

from ...tiny import (
    SIGLIP_IMAGE_MEAN, SIGLIP_IMAGE_STD, byte_level_tokenizer, image_only_processor_class, set_generation_token_ids,
    sharpen_vision_attention,
)

ONEVISION_CHAT_TEMPLATE = (
    "{% for message in messages %}<|im_start|>{{ message['role'] }}\n"
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n"
    "{% elif item['type'] == 'video' %}<video>\n"
    "{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
# SigLIP's random attention needs less sharpening than CLIP's for a realistic map: at 2 the importance spans five orders
# of magnitude, and VFlowOpt's 10% preset recycles into the spec's 20 cells on the square 2x2-grid image.
ONEVISION_QK_WEIGHT_SCALE = 2.0


def tiny_llava_onevision_config(vocab_size: int = 300, **token_ids: int) -> LlavaOnevisionConfig:
    """A tiny ``LlavaOnevisionConfig`` with LLaVA-OneVision-7B's geometry at toy widths."""
    vision_config = dict(
        model_type="siglip_vision_model", hidden_size=32, intermediate_size=64, num_hidden_layers=26,
        num_attention_heads=2, image_size=384, patch_size=14,
    )
    text_config = dict(
        model_type="qwen2", vocab_size=vocab_size, hidden_size=64, intermediate_size=128, num_hidden_layers=28,
        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=8192, bos_token_id=None, eos_token_id=None,
    )
    return LlavaOnevisionConfig(
        vision_config=vision_config, text_config=text_config, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", **token_ids,
    )


def bench_preset_llava_onevision_config(vocab_size: int = 300, **token_ids: int) -> LlavaOnevisionConfig:
    """LLaVA-OneVision-7B at 1/4 width, full depth and full token geometry, for ``flowcut-hf bench --family
    llava-onevision``.

    ======================  ====================  ===============
    component               LLaVA-OV-7B           this preset
    ======================  ====================  ===============
    SigLIP layers / heads   26 / 16               26 / 4
    SigLIP width / MLP      1152 / 4304           288 / 1076
    LLM layers / heads      28 / 28 (kv 4)        28 / 7 (kv 1)
    LLM width / MLP         3584 / 18944          896 / 4736
    ======================  ====================  ===============

    Head widths are preserved (SigLIP 72, Qwen2 128), and so are the 384 px / 14 px crops and anyres_max_9.
    """
    vision_config = dict(
        model_type="siglip_vision_model", hidden_size=288, intermediate_size=1076, num_hidden_layers=26,
        num_attention_heads=4, image_size=384, patch_size=14,
    )
    text_config = dict(
        model_type="qwen2", vocab_size=vocab_size, hidden_size=896, intermediate_size=4736, num_hidden_layers=28,
        num_attention_heads=7, num_key_value_heads=1, max_position_embeddings=32768, bos_token_id=None, eos_token_id=None,
    )
    return LlavaOnevisionConfig(
        vision_config=vision_config, text_config=text_config, vision_feature_layer=-1,
        vision_feature_select_strategy="full", vision_aspect_ratio="anyres_max_9", **token_ids,
    )


def build_tiny_onevision_tokenizer() -> TokenizersBackend:
    """A byte-level tokenizer with LLaVA-OneVision's chat tokens and ``<image>`` / ``<video>`` placeholders."""
    added = ["<|im_start|>", "<|im_end|>", "<image>", "<video>"]
    return byte_level_tokenizer(added, "<|im_end|>", {"image_token": "<image>", "video_token": "<video>"}, ONEVISION_CHAT_TEMPLATE)


def build_random_llava_onevision(config_for, seed: int = 0, qk_weight_scale: float = ONEVISION_QK_WEIGHT_SCALE):
    """A random stock ``LlavaOnevisionForConditionalGeneration`` for ``config_for(vocab_size=..., <token ids>)`` and
    its stock processor (images only)."""
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
    sharpen_vision_attention(model.model.vision_tower, qk_weight_scale)
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


def build_tiny_llava_onevision(seed: int = 0, qk_weight_scale: float = ONEVISION_QK_WEIGHT_SCALE):
    """A random tiny stock ``LlavaOnevisionForConditionalGeneration`` and its stock processor (images only, see
    :func:`flowcut_hf.tiny.image_only_processor_class`)."""
    return build_random_llava_onevision(tiny_llava_onevision_config, seed, qk_weight_scale)


def builtin_model(size: str, seed: int = 0):
    """The family's built-in model of ``size`` (see :meth:`flowcut_hf.family.FlowCutFamily.builtin_model`)."""
    config_for = tiny_llava_onevision_config if size == "tiny" else bench_preset_llava_onevision_config
    return build_random_llava_onevision(config_for, seed)
