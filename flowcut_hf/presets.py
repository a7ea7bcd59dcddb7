"""Ready-made ``LlavaConfig`` / ``LlavaNextConfig`` objects with the real LLaVA-1.5 and LLaVA-NeXT geometry.

Two presets, both randomly initialised when a model is built from them (no
weights are downloaded):

* :func:`bench_preset_config` keeps LLaVA-1.5-7B's *depth and token geometry*
  (24-layer CLIP at 336 px / 14 px patches -> 576 image tokens, 32-layer
  Llama) at a quarter of the width. Sequence lengths, layer counts and the
  vision/LLM compute split therefore behave like the real model, so pruning
  speed-ups measured on it are indicative, while it fits on any GPU (~0.5B
  parameters).
* :func:`tiny_llava_config` keeps the real *token geometry* (577 encoder
  tokens, 576 image tokens) but shrinks every width so a CPU forward takes
  well under a second: meant for tests of pruning logic, shapes and caches.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig, LlavaConfig, LlavaNextConfig

__all__ = [
    "bench_preset_config",
    "bench_preset_llava_onevision_config",
    "bench_preset_next_config",
    "bench_preset_qwen2_vl_config",
    "tiny_llava_config",
    "tiny_llava_next_config",
    "tiny_llava_onevision_config",
    "tiny_qwen_vl_config",
]

# llava-hf/llava-v1.6-*: (height, width) resolutions an image may be tiled to, in 336 px crops.
LLAVA_NEXT_GRID_PINPOINTS = [[336, 672], [672, 336], [672, 672], [1008, 336], [336, 1008]]

# LLaVA-1.5 (llava-hf/llava-1.5-7b-hf) constants that the presets share.
_LLAVA15_IMAGE_SIZE = 336
_LLAVA15_PATCH_SIZE = 14
_LLAVA15_VISION_LAYERS = 24
_LLAVA15_VOCAB = 32064
_LLAVA15_IMAGE_TOKEN_INDEX = 32000
_LLAVA15_PAD_TOKEN_ID = 32001
_LLAVA15_IMAGE_SEQ_LENGTH = (_LLAVA15_IMAGE_SIZE // _LLAVA15_PATCH_SIZE) ** 2  # 576


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

    Head widths are preserved (CLIP 64, Llama 128), so attention kernels see
    the same per-head shapes as on the real model.
    """
    vision_config = CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=_LLAVA15_VISION_LAYERS,
        num_attention_heads=4,
        image_size=_LLAVA15_IMAGE_SIZE,
        patch_size=_LLAVA15_PATCH_SIZE,
        num_channels=3,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=256,
    )
    text_config = LlamaConfig(
        vocab_size=_LLAVA15_VOCAB,
        hidden_size=1024,
        intermediate_size=2752,
        num_hidden_layers=32,
        num_attention_heads=8,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=_LLAVA15_PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=_LLAVA15_IMAGE_TOKEN_INDEX,
        image_seq_length=_LLAVA15_IMAGE_SEQ_LENGTH,
        projector_hidden_act="gelu",
        vision_feature_select_strategy="default",
        vision_feature_layer=-2,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def tiny_llava_config(
    num_vision_layers: int = _LLAVA15_VISION_LAYERS,
    vocab_size: int = 256,
    image_token_index: int | None = None,
    *,
    vision_feature_layer: int = -2,
    vision_feature_select_strategy: str = "default",
    num_text_layers: int = 2,
) -> LlavaConfig:
    """A tiny LLaVA-1.5-shaped config for fast CPU tests.

    The CLIP tower keeps the real token geometry (336 px, 14 px patches ->
    576 patches + CLS = 577 tokens) so FlowCut's schedules and ``target_num``
    values are the real ones; only widths shrink (hidden 32, 2 heads, MLP 64).
    The Llama is hidden 64, 4 heads, 2 KV heads (so grouped-query attention
    paths are exercised), MLP 128.

    Args:
        num_vision_layers: CLIP depth (LLaVA-1.5: 24).
        vocab_size: Llama vocabulary size.
        image_token_index: id of the ``<image>`` placeholder; defaults to
            ``vocab_size - 1``. Must lie inside the vocabulary because the
            placeholder ids go through the embedding table before being
            overwritten by image features.
        vision_feature_layer, vision_feature_select_strategy: as in
            ``LlavaConfig``.
        num_text_layers: Llama depth.
    """
    if image_token_index is None:
        image_token_index = vocab_size - 1
    if not 0 <= image_token_index < vocab_size:
        raise ValueError(f"image_token_index {image_token_index} must lie in [0, {vocab_size})")

    vision_config = CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_vision_layers,
        num_attention_heads=2,
        image_size=_LLAVA15_IMAGE_SIZE,
        patch_size=_LLAVA15_PATCH_SIZE,
        num_channels=3,
        hidden_act="quick_gelu",
        projection_dim=32,
    )
    # bos/eos/pad are pinned to ids that are never the image placeholder, so a
    # generate() smoke test cannot mistake a special token for an image slot.
    special = [i for i in range(vocab_size) if i != image_token_index][:3]
    if len(special) < 3:
        raise ValueError("vocab_size must be at least 4")
    pad_id, bos_id, eos_id = special
    text_config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_text_layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        hidden_act="silu",
        max_position_embeddings=2048,
        rms_norm_eps=1e-5,
        pad_token_id=pad_id,
        bos_token_id=bos_id,
        eos_token_id=eos_id,
        tie_word_embeddings=False,
    )
    return LlavaConfig(
        vision_config=vision_config,
        text_config=text_config,
        image_token_index=image_token_index,
        # The processor expands <image> to this many placeholders; "full" keeps CLS.
        image_seq_length=_LLAVA15_IMAGE_SEQ_LENGTH + (vision_feature_select_strategy == "full"),
        projector_hidden_act="gelu",
        vision_feature_select_strategy=vision_feature_select_strategy,
        vision_feature_layer=vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=False,
    )


def next_config_like(llava: LlavaConfig) -> LlavaNextConfig:
    """The LLaVA-NeXT config with ``llava``'s vision tower, projector and language model, and NeXT's anyres grid."""
    return LlavaNextConfig(
        vision_config=llava.vision_config,
        text_config=llava.text_config,
        image_token_index=llava.image_token_id,
        image_seq_length=_LLAVA15_IMAGE_SEQ_LENGTH,
        projector_hidden_act=llava.projector_hidden_act,
        vision_feature_select_strategy="default",
        vision_feature_layer=llava.vision_feature_layer,
        multimodal_projector_bias=llava.multimodal_projector_bias,
        tie_word_embeddings=False,
        image_grid_pinpoints=LLAVA_NEXT_GRID_PINPOINTS,
    )


def bench_preset_next_config() -> LlavaNextConfig:
    """LLaVA-NeXT-7B (llava-v1.6-vicuna-7b) at 1/4 width, full depth and full token geometry.

    The vision tower and the language model are those of :func:`bench_preset_config`; the anyres grid is NeXT's, so
    a 672x672 image becomes 5 crops, 2880 patches (the paper's "2880 tokens"), and 2928 visual tokens for the stock
    model (576 base + 48x48 grid + 48 newlines).
    """
    return next_config_like(bench_preset_config())


def tiny_llava_next_config(
    vocab_size: int = 256, image_token_index: int | None = None, *, num_text_layers: int = 4, num_vision_layers: int = 24
) -> LlavaNextConfig:
    """A tiny LLaVA-NeXT config for fast CPU tests: :func:`tiny_llava_config`'s widths, NeXT's anyres grid.

    The language model has 4 layers by default, so FlowCut's LLM stage (after layer 1) leaves two layers that see
    only the kept tokens.
    """
    return next_config_like(
        tiny_llava_config(
            num_vision_layers=num_vision_layers,
            vocab_size=vocab_size,
            image_token_index=image_token_index,
            num_text_layers=num_text_layers,
        )
    )


# Qwen2-VL / Qwen2.5-VL: the real token geometry (14 px patches, 2 frames per temporal patch, 2x2 merge units,
# 32 vision blocks; Qwen2.5-VL's 112 px windows and full-attention blocks 7, 15, 23, 31) at toy widths.
QWEN_VISION_GEOMETRY = dict(depth=32, patch_size=14, temporal_patch_size=2, spatial_merge_size=2, in_channels=3)
QWEN2_5_WINDOW_GEOMETRY = dict(window_size=112, fullatt_block_indexes=[7, 15, 23, 31])
QWEN_TOKEN_IDS = dict(image_token_id=0, video_token_id=0, vision_start_token_id=0, vision_end_token_id=0)


def tiny_qwen_vl_config(version: str = "2", vocab_size: int = 300, **token_ids: int):
    """A tiny ``Qwen2VLConfig`` (``version="2"``) or ``Qwen2_5_VLConfig`` (``"2.5"``) with the real vision geometry.

    ``token_ids`` sets ``image_token_id``, ``video_token_id``, ``vision_start_token_id`` and ``vision_end_token_id``.
    """
    from transformers import Qwen2_5_VLConfig, Qwen2VLConfig

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
    """Qwen2-VL-7B at 1/4 width, full depth and full token geometry, for ``flowcut-hf bench --preset qwen2-vl``.

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
    from transformers import Qwen2VLConfig

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


def tiny_llava_onevision_config(vocab_size: int = 300, **token_ids: int):
    """A tiny ``LlavaOnevisionConfig`` with LLaVA-OneVision-7B's geometry: SigLIP at 384 px / 14 px (27 x 27 = 729
    patches per crop, 26 layers, no CLS), anyres_max_9 with the standard pinpoints, and a 28-layer Qwen2, at toy widths."""
    from transformers import LlavaOnevisionConfig

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


def bench_preset_llava_onevision_config(vocab_size: int = 300, **token_ids: int):
    """LLaVA-OneVision-7B at 1/4 width, full depth and full token geometry, for ``flowcut-hf bench --preset
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
    from transformers import LlavaOnevisionConfig

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
