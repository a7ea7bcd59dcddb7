"""Tests for flowcut_hf.accounting and flowcut_hf.presets.

The analytic counts are checked three ways: against hand counts written out
term by term, against torch's FlopCounterMode on real HF modules (eager
attention, so QK^T / AV show up as bmm), and, for KV memory, against the
tensors a DynamicCache actually holds after a prefill.
"""

from __future__ import annotations

import json

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    CLIPVisionConfig,
    CLIPVisionModel,
    DynamicCache,
    LlamaConfig,
    LlamaForCausalLM,
    LlavaConfig,
    LlavaForConditionalGeneration,
)

from flowcut_hf.modeling.flowcut_compat import cache_of, features_tensor, image_outputs_of
from flowcut_hf import accounting as acc
from flowcut_hf.families.llava.builtin import bench_preset_config, tiny_llava_config

# --------------------------------------------------------------------------- #
# fixtures: configs small enough to count by hand
# --------------------------------------------------------------------------- #


def _hand_vision_config() -> CLIPVisionConfig:
    # 28 px / 14 px patches -> 2x2 = 4 patches, 5 tokens with CLS.
    return CLIPVisionConfig(
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        image_size=28,
        patch_size=14,
        num_channels=3,
        projection_dim=8,
    )


def _hand_text_config(**overrides) -> LlamaConfig:
    kwargs = dict(
        vocab_size=10,
        hidden_size=8,
        intermediate_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=1,
        max_position_embeddings=64,
        pad_token_id=0,
        bos_token_id=1,
        eos_token_id=2,
    )
    kwargs.update(overrides)
    return LlamaConfig(**kwargs)


def _counted_flops(module: torch.nn.Module, **inputs) -> tuple[int, dict[str, int]]:
    counter = FlopCounterMode(display=False, depth=None)
    with torch.no_grad(), counter:
        module(**inputs)
    per_module = {name: sum(ops.values()) for name, ops in counter.get_flop_counts().items()}
    return counter.get_total_flops(), per_module


# --------------------------------------------------------------------------- #
# hand counts
# --------------------------------------------------------------------------- #


def test_vision_hand_count():
    cfg = _hand_vision_config()
    # patch conv: 4 patches x 8 out-channels x (3*14*14 = 588) MACs, x2.
    patch_embed = 2 * 4 * 8 * 588  # 37632
    n, d, m = 5, 8, 16
    q_k_v_o = 4 * (2 * n * d * d)  # 4 x 640 = 2560
    qk_t = 2 * 2 * (n * n * (d // 2))  # 2 heads x 25 x 4 MACs, x2 = 400
    av = 2 * 2 * (n * n * (d // 2))  # 400
    fc1 = 2 * n * d * m  # 1280
    fc2 = 2 * n * m * d  # 1280
    layer = q_k_v_o + qk_t + av + fc1 + fc2  # 5920
    assert patch_embed == 37632 and layer == 5920

    assert acc.vision_layer_flops(cfg, 5) == 5920
    assert acc.vision_encoder_flops(cfg, [5]) == 37632 + 5920
    assert acc.vision_encoder_flops(cfg, [5], batch_size=3) == 3 * (37632 + 5920)
    # No layer ran: the patch embedding is still paid.
    assert acc.vision_encoder_flops(cfg, []) == 37632
    # 3 tokens: 8*3*64 + 4*9*8 + 4*3*8*16 = 1536 + 288 + 1536.
    assert acc.vision_layer_flops(cfg, 3) == 1536 + 288 + 1536


def test_vision_hand_count_matches_flop_counter():
    cfg = _hand_vision_config()
    model = CLIPVisionModel._from_config(cfg, attn_implementation="eager").eval()
    total, _ = _counted_flops(model, pixel_values=torch.randn(2, 3, 28, 28))
    assert total == acc.vision_encoder_flops(cfg, [5], batch_size=2) == 2 * (37632 + 5920)


def test_llm_hand_count_gqa():
    cfg = _hand_text_config()  # 2 query heads, 1 KV head, head_dim 4
    n, d, h, m, vocab = 5, 8, 4, 16, 10
    q = 2 * n * d * (2 * h)  # 640
    k = 2 * n * d * (1 * h)  # 320
    v = 2 * n * d * (1 * h)  # 320
    o = 2 * n * (2 * h) * d  # 640
    qk_t = 2 * 2 * (n * n) * h  # 2 heads x 25 pairs x 4 MACs, x2 = 400
    av = 2 * 2 * (n * n) * h  # 400
    gate = up = down = 2 * n * d * m  # 1280 each
    layer = q + k + v + o + qk_t + av + gate + up + down
    assert layer == 1920 + 800 + 3840 == 6560
    lm_head_last = 2 * 1 * d * vocab  # 160

    assert acc.llm_prefill_flops(cfg, 5) == layer + lm_head_last
    assert acc.llm_prefill_flops(cfg, 5, batch_size=4) == 4 * (layer + lm_head_last)
    # Every position projected to the vocabulary (plain forward): 5 x 160.
    assert acc.llm_prefill_flops(cfg, 5, lm_head_tokens=None) == layer + 5 * lm_head_last
    # Causal pairs: 5*6/2 = 15 instead of 25 -> attention 2 x (2*2*15*4) = 480.
    assert acc.llm_prefill_flops(cfg, 5, causal=True) == 6560 - 800 + 480 + 160


def test_llm_explicit_head_dim_hand_count():
    # head_dim 8 != hidden/heads = 4: projections widen to 2*8 = 16 outputs.
    cfg = _hand_text_config(head_dim=8)
    n, d, h, m = 5, 8, 8, 16
    q_o = 2 * (2 * n * d * (2 * h))  # 2 x 1280
    k_v = 2 * (2 * n * d * (1 * h))  # 2 x 640
    attention = 2 * (2 * 2 * (n * n) * h)  # 2 x 800
    mlp = 3 * (2 * n * d * m)  # 3840
    assert q_o + k_v + attention + mlp == 9280
    assert acc.llm_prefill_flops(cfg, 5) == 9280 + 160


@pytest.mark.parametrize("overrides", [{}, {"head_dim": 8}])
def test_llm_hand_count_matches_flop_counter(overrides):
    cfg = _hand_text_config(**overrides)
    model = LlamaForCausalLM._from_config(cfg, attn_implementation="eager").eval()
    ids = torch.randint(3, 10, (3, 5))
    # generate() prefills with logits_to_keep=1, which is what lm_head_tokens=1 models.
    total, _ = _counted_flops(model, input_ids=ids, logits_to_keep=1)
    assert total == acc.llm_prefill_flops(cfg, 5, batch_size=3)
    total, _ = _counted_flops(model, input_ids=ids)
    assert total == acc.llm_prefill_flops(cfg, 5, batch_size=3, lm_head_tokens=None)


def test_projector_hand_count():
    config = LlavaConfig(vision_config=_hand_vision_config(), text_config=_hand_text_config())
    # linear_1 8->8 and linear_2 8->8 on 4 tokens: 2*4*64 + 2*4*64.
    assert acc.projector_flops(config, 4) == 512 + 512
    assert acc.projector_flops(config, 4, batch_size=2) == 2 * 1024
    # Two concatenated feature layers double linear_1's input width.
    config.vision_feature_layer = [-2, -1]
    assert acc.projector_flops(config, 4) == 2 * 4 * 16 * 8 + 512


def test_kv_cache_hand_count():
    cfg = _hand_text_config()
    # K and V x 1 layer x 1 KV head x head_dim 4 x 5 tokens x batch 1 x 2 bytes.
    assert acc.kv_cache_bytes(cfg, 5, 1, "float16") == 2 * 1 * 1 * 4 * 5 * 1 * 2 == 80
    assert acc.kv_cache_bytes(cfg, 5, 3, torch.float32) == 80 * 3 * 2
    assert acc.kv_cache_bytes(_hand_text_config(head_dim=8), 5, 1, "bf16") == 160


# --------------------------------------------------------------------------- #
# schedules and pruning
# --------------------------------------------------------------------------- #


def test_full_schedule_llava15():
    config = bench_preset_config()
    assert acc.num_patches(config) == 576
    assert acc.full_num_image_tokens(config) == 576
    # Feature layer -2 is the output of layer 23; layer 24 never needs to run.
    assert acc.full_schedule(config) == [577] * 23
    assert acc.full_schedule(config.vision_config) == [577] * 23
    assert acc.full_schedule(config, -1) == [577] * 24
    assert acc.full_schedule(config, 0) == []
    assert acc.full_schedule(config, 12) == [577] * 12
    # The deepest of several feature layers decides.
    assert acc.full_schedule(config, [-5, -2, 3]) == [577] * 23


def test_full_schedule_follows_config_feature_layer():
    config = tiny_llava_config(num_vision_layers=6, vision_feature_layer=-3)
    assert acc.full_schedule(config) == [577] * 4
    config = tiny_llava_config(vision_feature_select_strategy="full")
    assert acc.full_num_image_tokens(config) == 577


@pytest.mark.parametrize("layer", [25, -26])
def test_full_schedule_rejects_out_of_range(layer):
    with pytest.raises(ValueError):
        acc.full_schedule(bench_preset_config(), layer)


def _linear_schedule(num_layers: int, start: int, end: int) -> list[int]:
    # FlowCut-like: sequence shrinks steadily from start to end (CLS included).
    return [round(start + (end - start) * i / (num_layers - 1)) for i in range(num_layers)]


def test_pruning_reduces_vision_flops_monotonically():
    config = bench_preset_config()
    full = acc.full_schedule(config)
    full_flops = acc.vision_encoder_flops(config, full)

    # Stronger pruning (smaller final keep) must cost strictly less.
    targets = [577, 449, 289, 193, 129, 65, 33]
    flops = [acc.vision_encoder_flops(config, _linear_schedule(23, 577, t)) for t in targets]
    assert flops[0] == full_flops
    assert all(a > b for a, b in zip(flops, flops[1:]))

    # Removing one token from any single layer strictly lowers the count.
    base = _linear_schedule(23, 577, 129)
    base_flops = acc.vision_encoder_flops(config, base)
    for i in range(len(base)):
        fewer = list(base)
        fewer[i] -= 1
        assert acc.vision_encoder_flops(config, fewer) < base_flops

    # Pruning earlier saves more than pruning the same amount later.
    early = [577] + [289] * 22
    late = [577] * 22 + [289]
    assert acc.vision_encoder_flops(config, early) < acc.vision_encoder_flops(config, late)


def test_schedule_from_tensor_is_accepted_and_normalised():
    # The model reports schedules that may have passed through tensors.
    config = bench_preset_config()
    schedule = _linear_schedule(23, 577, 65)
    as_tensor = torch.tensor(schedule)
    assert acc.vision_encoder_flops(config, as_tensor) == acc.vision_encoder_flops(config, schedule)
    account = acc.prefill_account(config, 16, token_schedule=as_tensor, num_image_tokens=torch.tensor(64))
    assert json.loads(json.dumps(account.as_dict()))["token_schedule"] == schedule


@pytest.mark.parametrize(
    "schedule, error",
    [([577] * 25, ValueError), ([578], ValueError), ([0], ValueError), ([577.0], TypeError)],
)
def test_schedule_validation(schedule, error):
    with pytest.raises(error):
        acc.vision_encoder_flops(bench_preset_config(), schedule)


# --------------------------------------------------------------------------- #
# KV cache vs a real DynamicCache
# --------------------------------------------------------------------------- #


def _cache_nbytes(cache: DynamicCache) -> int:
    return sum(layer.keys.nbytes + layer.values.nbytes for layer in cache.layers)


@pytest.mark.parametrize("dtype", [torch.float32, torch.bfloat16, torch.float16])
@pytest.mark.parametrize("batch_size, seq_len", [(1, 17), (3, 40)])
def test_kv_bytes_match_dynamic_cache(dtype, batch_size, seq_len):
    text_config = tiny_llava_config().text_config
    model = LlamaForCausalLM(text_config).to(dtype).eval()
    ids = torch.randint(3, 200, (batch_size, seq_len))
    with torch.no_grad():
        out = model(input_ids=ids, use_cache=True, logits_to_keep=1)
    assert isinstance(cache_of(out), DynamicCache)
    assert _cache_nbytes(cache_of(out)) == acc.kv_cache_bytes(text_config, seq_len, batch_size, dtype)


def test_kv_bytes_match_llava_prefill_with_image():
    config = tiny_llava_config()
    model = LlavaForConditionalGeneration(config).eval()
    num_text = 6
    ids = torch.tensor([[1] + [config.image_token_index] * 576 + [5, 6, 7, 8, 9]] * 2)
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(2, 3, 336, 336), use_cache=True, logits_to_keep=1)
    account = acc.prefill_account(config, num_text, batch_size=2, kv_dtype=torch.float32)
    assert account.llm_seq_len == ids.shape[1] == 582
    assert _cache_nbytes(cache_of(out)) == account.kv_cache_bytes


# --------------------------------------------------------------------------- #
# whole prefill vs FlopCounterMode, and the PrefillAccount bundle
# --------------------------------------------------------------------------- #


def test_prefill_account_matches_flop_counter_on_tiny_llava():
    config = tiny_llava_config(num_vision_layers=4)
    model = LlavaForConditionalGeneration._from_config(config, attn_implementation="eager").eval()
    ids = torch.tensor([[1] + [config.image_token_index] * 576 + [5, 6, 7]])
    total, per_module = _counted_flops(
        model, input_ids=ids, pixel_values=torch.randn(1, 3, 336, 336), logits_to_keep=1
    )
    # Stock HF LLaVA runs every CLIP layer, even the one after the feature layer.
    account = acc.prefill_account(config, 4, token_schedule=[577] * 4, num_image_tokens=576)
    prefix = "LlavaForConditionalGeneration"
    assert per_module[f"{prefix}.model.vision_tower"] == account.vision_flops
    assert per_module[f"{prefix}.model.multi_modal_projector"] == account.projector_flops
    assert (
        per_module[f"{prefix}.model.language_model"] + per_module[f"{prefix}.lm_head"] == account.llm_flops
    )
    assert total == account.total_flops

    # FlowCut's encoder stops at the feature layer: exactly one layer cheaper.
    unpruned = acc.prefill_account(config, 4)
    assert unpruned.token_schedule == (577,) * 3
    assert account.vision_flops - unpruned.vision_flops == acc.vision_layer_flops(config, 577)


def test_prefill_account_pruned_vs_full():
    config = bench_preset_config()
    full = acc.prefill_account(config, 64, batch_size=2)
    pruned = acc.prefill_account(
        config, 64, token_schedule=_linear_schedule(23, 577, 65), num_image_tokens=64, batch_size=2
    )
    assert full.llm_seq_len == 64 + 576 and pruned.llm_seq_len == 64 + 64
    assert full.num_images == pruned.num_images == 2
    for quantity, ratio in pruned.ratio_to(full).items():
        assert 0 < ratio < 1, quantity
    assert pruned.kv_cache_bytes * (64 + 576) == full.kv_cache_bytes * (64 + 64)
    assert full.total_flops == full.vision_flops + full.projector_flops + full.llm_flops

    with pytest.raises(ValueError):
        acc.prefill_account(config, 64, token_schedule=[577] * 23)


def test_as_dict_is_json_serialisable():
    account = acc.prefill_account(
        bench_preset_config(),
        32,
        token_schedule=(577, 400, 300, 200),
        num_image_tokens=128,
        kv_dtype=torch.bfloat16,
    )
    data = account.as_dict()
    assert json.loads(json.dumps(data)) == data
    assert data["token_schedule"] == [577, 400, 300, 200]
    assert data["kv_dtype"] == "bfloat16"
    assert data["total_flops"] == account.total_flops
    assert all(type(v) in (int, str, list) for v in data.values())


@pytest.mark.parametrize(
    "dtype, nbytes",
    [(torch.float16, 2), (torch.float32, 4), ("bf16", 2), ("torch.bfloat16", 2), ("float8_e4m3fn", 1), (8, 8)],
)
def test_dtype_nbytes(dtype, nbytes):
    assert acc.dtype_nbytes(dtype) == nbytes


def test_dtype_nbytes_rejects_unknown():
    with pytest.raises(ValueError):
        acc.dtype_nbytes("complex-ish")


# --------------------------------------------------------------------------- #
# presets
# --------------------------------------------------------------------------- #


def test_bench_preset_geometry_and_instantiation():
    config = bench_preset_config()
    vision, text = config.vision_config, config.text_config
    assert (vision.num_hidden_layers, vision.image_size, vision.patch_size) == (24, 336, 14)
    assert (vision.hidden_size, vision.num_attention_heads, vision.intermediate_size) == (256, 4, 1024)
    assert vision.hidden_act == "quick_gelu"
    assert (text.num_hidden_layers, text.hidden_size, text.num_attention_heads) == (32, 1024, 8)
    assert (text.num_key_value_heads, text.intermediate_size, text.vocab_size) == (8, 2752, 32064)
    assert text.head_dim == 128
    assert config.image_token_index == 32000
    assert config.vision_feature_layer == -2
    assert config.vision_feature_select_strategy == "default"
    assert config.projector_hidden_act == "gelu"

    # Meta device: checks the model builds without allocating ~2 GB on CPU.
    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    projector = model.model.multi_modal_projector
    assert (projector.linear_1.in_features, projector.linear_1.out_features) == (256, 1024)
    # Counted by class: the vision tower's attribute nesting differs across transformers versions.
    layer_types = [type(m).__name__ for m in model.modules()]
    assert layer_types.count("CLIPEncoderLayer") == 24
    assert layer_types.count("LlamaDecoderLayer") == 32


def test_tiny_llava_forward_on_cpu():
    config = tiny_llava_config(image_token_index=200)
    assert config.image_token_index == 200
    assert config.text_config.num_key_value_heads == 2
    assert config.text_config.max_position_embeddings == 2048
    model = LlavaForConditionalGeneration(config).eval()
    ids = torch.tensor([[1] + [200] * 576 + [5, 6]])
    with torch.no_grad():
        out = model(input_ids=ids, pixel_values=torch.randn(1, 3, 336, 336))
    assert out.logits.shape == (1, 579, 256)
    assert torch.isfinite(out.logits).all()
    assert features_tensor(image_outputs_of(out)).reshape(-1, 64).shape == (576, 64)


def test_tiny_llava_rejects_image_token_outside_vocab():
    with pytest.raises(ValueError):
        tiny_llava_config(vocab_size=128, image_token_index=128)


# ----------------------------------------------------------------------------- LLaVA-NeXT


def test_next_account_counts_layers_before_and_after_the_llm_stage_by_hand():
    from flowcut_hf.accounting import AnyresImageTokens, decoder_layer_flops, next_prefill_account
    from flowcut_hf.families.llava_next.builtin import bench_preset_next_config

    config = bench_preset_next_config()
    stock_image = AnyresImageTokens.stock(config, (672, 672))
    assert (stock_image.crops, stock_image.tokens_into_llm) == (5, 2928)
    stock = next_prefill_account(config, 40, [stock_image])
    assert stock.llm_layer_seq_lens == (2968,) * 32

    pruned_image = AnyresImageTokens(crops=5, vision_schedule=(577, 400, 300, 81), tokens_into_llm=300, tokens_after_llm_stage=160)
    pruned = next_prefill_account(config, 40, [pruned_image, pruned_image], llm_prune_layer=1)
    text = config.text_config
    long, short = 40 + 600, 40 + 320
    expected_llm = 2 * decoder_layer_flops(text, long) + 30 * decoder_layer_flops(text, short) + 2 * text.hidden_size * text.vocab_size
    assert pruned.llm_flops == expected_llm
    assert pruned.llm_layer_seq_lens == (long,) * 2 + (short,) * 30 and pruned.llm_seq_len == short
    kv_per_token = 2 * text.num_key_value_heads * (text.hidden_size // text.num_attention_heads) * 2  # float16
    assert pruned.kv_cache_bytes == kv_per_token * (2 * long + 30 * short)
    # Each crop hands the projector its last layer's tokens without CLS: 80 per crop here, 10 crops.
    d_in, d_out = config.vision_config.hidden_size, text.hidden_size
    assert pruned.projector_flops == 2 * 10 * 80 * (d_in * d_out + d_out * d_out)
    assert pruned.vision_flops == 2 * acc.vision_encoder_flops(config, [577, 400, 300, 81], 5)
    assert pruned.total_flops < stock.total_flops


def test_next_account_equals_the_cache_a_real_prefill_leaves():
    from flowcut_hf import flowcut
    from flowcut_hf.accounting import AnyresImageTokens, next_prefill_account
    from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
    from flowcut_hf.tiny import synthetic_image

    model, processor = build_tiny_llava_next(seed=0)
    flowcut(model, target_num=32)
    image_size = (600, 800)
    inputs = processor(images=synthetic_image(0, size=image_size), text="USER: <image>\nWhat? ASSISTANT:", return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs, use_cache=True)
    stock_count = features.placeholder_counts[0]
    text_tokens = inputs["input_ids"].shape[1] - stock_count
    image = AnyresImageTokens(
        crops=features.keep_indices[0].shape[0],
        vision_schedule=tuple(features.token_schedule[0]),
        tokens_into_llm=len(features.pooler_output[0]),
        tokens_after_llm_stage=len(output.llm_keep_indices[0]),
    )
    account = next_prefill_account(model.config, text_tokens, [image], llm_prune_layer=1, kv_dtype=torch.float32)
    layers = cache_of(output).layers
    assert list(account.llm_layer_seq_lens) == [layer.keys.shape[2] for layer in layers]
    assert account.kv_cache_bytes == sum(layer.keys.nbytes + layer.values.nbytes for layer in layers)
    stock = next_prefill_account(model.config, text_tokens, [AnyresImageTokens.stock(model.config, image_size)])
    assert stock.llm_seq_len == inputs["input_ids"].shape[1]
