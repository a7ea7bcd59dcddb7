"""The pure-torch FlowCut core: O(N) signals, adaptive count, batch behaviour and numerical robustness."""

from __future__ import annotations

import math

import pytest
import torch
from PIL import Image

from flowcut_hf.modeling.flowcut_core import (
    LayerSignals,
    adaptive_prune_count,
    attention_entropy_ratio,
    compute_layer_signals,
    fused_score,
)
from flowcut_hf.families.llava.builtin import build_tiny_llava
from flowcut_hf.tiny import synthetic_image


def test_signals_equal_the_full_attention_matrix_computation():
    torch.manual_seed(0)
    batch, heads, length, dim = 2, 4, 50, 16
    q, k, v = (torch.randn(batch, heads, length, dim, dtype=torch.float64) for _ in range(3))
    scale = dim**-0.5
    signals = compute_layer_signals(q[:, :, 0], k.transpose(1, 2), v.transpose(1, 2), scale)
    full_attention = torch.softmax(q @ k.transpose(-1, -2) * scale, dim=-1)  # [B, H, S, S]
    torch.testing.assert_close(signals.cls_attention, full_attention[:, :, 0, 1:].mean(1).float())
    semantic = torch.softmax(v[:, :, :1] @ v.transpose(-1, -2), dim=-1)[:, :, 0]  # unscaled, as the authors
    torch.testing.assert_close(signals.semantic_attention, semantic.mean(1)[:, 1:].float())
    torch.testing.assert_close(signals.value_l1, v.mean(1).abs().sum(-1)[:, 1:].float())


def test_adaptive_count_follows_the_formula_with_half_to_even_rounding():
    attention = torch.tensor([[0.7, 0.1, 0.1, 0.05, 0.05]])
    p = attention / attention.sum()
    ratio = float(-(p * p.log()).sum() / math.log(5))
    expected = (5 - 1) / math.sqrt(4) * (1 - ratio**2)
    assert adaptive_prune_count(attention, remaining_layers=4, target_patches=1) == round(expected)
    uniform = torch.full((1, 100), 0.01)
    assert adaptive_prune_count(uniform, remaining_layers=4, target_patches=10) == 0


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_entropy_stays_finite_when_attention_underflows(dtype):
    attention = torch.zeros(2, 576, dtype=dtype)
    attention[:, :3] = torch.tensor([0.5, 0.3, 0.2], dtype=dtype)  # 573 probabilities underflowed to exactly 0
    ratio = attention_entropy_ratio(attention)
    assert torch.isfinite(ratio).all()
    count = adaptive_prune_count(attention, remaining_layers=20, target_patches=64)
    assert isinstance(count, int) and 0 < count <= 576 - 64
    signals = LayerSignals(attention, attention, torch.ones(2, 576, dtype=dtype))
    assert torch.isfinite(fused_score(signals)).all()


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_model_in_half_precision_with_peaked_attention_prunes_without_nan(dtype):
    model, processor = build_tiny_llava(seed=5)
    with torch.no_grad():
        for name, parameter in model.model.vision_tower.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(30.0)  # logits in the thousands: most softmax probabilities are exactly zero
    from flowcut_hf import flowcut

    flowcut(model.to(dtype), target_num=64)
    pixel_values = processor.image_processor(images=synthetic_image(0), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        output = model.model.get_image_features(pixel_values=pixel_values.to(dtype))
    assert output.keep_indices[0].numel() == 64
    assert torch.isfinite(output.pooler_output[0].float()).all()


def prune_counts(model, pixel_values):
    with torch.no_grad():
        schedule = model.model.get_image_features(pixel_values=pixel_values).token_schedule
    return [before - after for before, after in zip(schedule, schedule[1:])]


def test_prune_count_is_shared_across_the_batch_as_in_the_authors_code():
    """Documented behaviour: each pruning layer drops the batch maximum of the per-image counts."""
    from flowcut_hf import flowcut

    model, processor = build_tiny_llava(seed=0)
    flowcut(model, target_num=64)
    peaked = synthetic_image(0)
    flat = Image.new("RGB", (336, 336), (128, 128, 128))
    pixels = processor.image_processor(images=[peaked, flat], return_tensors="pt")["pixel_values"]

    alone_peaked = prune_counts(model, pixels[:1])
    alone_flat = prune_counts(model, pixels[1:])
    together = prune_counts(model, pixels)
    first_prune = 2  # the first pruning layer is encoder layer 1; its cut shows between schedule entries 1 and 2
    assert alone_peaked[first_prune - 1] != alone_flat[first_prune - 1], "the test needs images with different counts"
    assert together[first_prune - 1] == max(alone_peaked[first_prune - 1], alone_flat[first_prune - 1])
    with torch.no_grad():
        batch_output = model.model.get_image_features(pixel_values=pixels)
    assert [k.numel() for k in batch_output.keep_indices] == [64, 64]
