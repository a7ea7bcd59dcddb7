"""Model geometry that several built-in models share: CLIP ViT-L/14 at 336 px and a Vicuna-7B-shaped Llama, at 1/4
width (the benchmark size) or at toy widths (the test size). The families' adapters assemble their built-in configs from
these (``flowcut_hf/families/*/builtin.py``); random weights are filled in when a model is built, nothing is downloaded.

At 1/4 width the depth and the token geometry stay the real ones (24-layer CLIP at 336 px / 14 px patches, so 576
patches per crop; a 32-layer Llama), so sequence lengths, layer counts and the vision/LLM compute split behave like the
7B model while the model fits anywhere (~0.5B parameters). At toy widths a CPU forward takes well under a second.
"""

from __future__ import annotations

from transformers import CLIPVisionConfig, LlamaConfig

CLIP_L336_IMAGE_SIZE = 336
CLIP_L336_PATCH_SIZE = 14
CLIP_L336_LAYERS = 24
CLIP_L336_PATCHES = (CLIP_L336_IMAGE_SIZE // CLIP_L336_PATCH_SIZE) ** 2  # 576
VICUNA_VOCAB = 32064  # 32000 words, the <image> and pad tokens, padded to a multiple of 64
VICUNA_IMAGE_TOKEN_INDEX = 32000
VICUNA_PAD_TOKEN_ID = 32001


def quarter_clip_l336_config() -> CLIPVisionConfig:
    """CLIP ViT-L/14 at 336 px, 1/4 width: 24 layers, 4 heads of 64 (the real head width), hidden 256, MLP 1024."""
    return CLIPVisionConfig(
        hidden_size=256,
        intermediate_size=1024,
        num_hidden_layers=CLIP_L336_LAYERS,
        num_attention_heads=4,
        image_size=CLIP_L336_IMAGE_SIZE,
        patch_size=CLIP_L336_PATCH_SIZE,
        num_channels=3,
        hidden_act="quick_gelu",
        layer_norm_eps=1e-5,
        projection_dim=256,
    )


def quarter_vicuna_7b_config() -> LlamaConfig:
    """Vicuna-7B at 1/4 width: 32 layers, 8 heads of 128 (the real head width), hidden 1024, MLP 2752."""
    return LlamaConfig(
        vocab_size=VICUNA_VOCAB,
        hidden_size=1024,
        intermediate_size=2752,
        num_hidden_layers=32,
        num_attention_heads=8,
        num_key_value_heads=8,
        hidden_act="silu",
        max_position_embeddings=4096,
        rms_norm_eps=1e-5,
        pad_token_id=VICUNA_PAD_TOKEN_ID,
        bos_token_id=1,
        eos_token_id=2,
        tie_word_embeddings=False,
    )


def toy_clip_l336_config(num_layers: int = CLIP_L336_LAYERS) -> CLIPVisionConfig:
    """CLIP at 336 px / 14 px patches (576 patches + CLS = 577 tokens, so pruning schedules are the real ones) with
    toy widths: hidden 32, 2 heads, MLP 64."""
    return CLIPVisionConfig(
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=num_layers,
        num_attention_heads=2,
        image_size=CLIP_L336_IMAGE_SIZE,
        patch_size=CLIP_L336_PATCH_SIZE,
        num_channels=3,
        hidden_act="quick_gelu",
        projection_dim=32,
    )


def toy_llama_config(vocab_size: int, image_token_index: int, num_layers: int = 2) -> LlamaConfig:
    """A Llama with toy widths (hidden 64, 4 heads, 2 KV heads, so grouped-query attention paths run; MLP 128), whose
    pad, bos and eos ids are never ``image_token_index``: a generate() smoke test cannot mistake a special token for
    an image slot."""
    special = [i for i in range(vocab_size) if i != image_token_index][:3]
    if len(special) < 3:
        raise ValueError("vocab_size must be at least 4")
    pad_id, bos_id, eos_id = special
    return LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=64,
        intermediate_size=128,
        num_hidden_layers=num_layers,
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



__all__ = [
    "quarter_clip_l336_config", "quarter_vicuna_7b_config", "toy_clip_l336_config", "toy_llama_config",
]
