"""VFlowOpt's scoring, stage-0 recycling, LLM-stage plans and budget, against the spec's worked example."""

from __future__ import annotations

import pytest
import torch

from flowcut_hf.modeling.vflowopt_core import (
    VFLOWOPT_PRESETS,
    TokenGrid,
    VFlowOptSettings,
    average_retention,
    combine_importance,
    importance_map,
    llm_stage_keeps,
    patch_entropy,
    recycle_stage0,
    solve_last_ratio,
)

# A square image on LLaVA-OneVision's 2x2 grid: the 27x27 base crop, then the unpadded 54x54 local grid with a newline
# column (spec §2.2): 729 + 54 x 55 = 3699 packed tokens.
GRIDS = [TokenGrid(0, 27, 27), TokenGrid(729, 54, 55)]
LENGTH = 729 + 54 * 55
NEWLINES = torch.tensor([729 + row * 55 + 54 for row in range(54)])

# spec §2.2: (pruned = reduce + recycling slots, groups, kept after stage 0, from layer 9, from layer 18)
WORKED_EXAMPLE = {"10%": (3268 + 12, 20, 439, 439, 264), "25%": (2718 + 15, 20, 986, 970, 851),
                  "50%": (1023 + 26, 34, 2684, 2010, 979)}


def example_importance(seed: int = 0) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    importance = torch.rand(LENGTH, generator=generator) * 2e-3
    importance[NEWLINES] = 1.0  # the release gives newline tokens importance 1.0
    return importance


@pytest.mark.parametrize("preset", ["10%", "25%", "50%"])
def test_each_released_preset_gives_the_spec_counts_on_the_2x2_grid_example(preset):
    settings = VFLOWOPT_PRESETS["llava-onevision-qwen2-7b"][preset]
    pruned, groups, kept, from_9, from_18 = WORKED_EXAMPLE[preset]
    features = torch.randn(LENGTH, 8, generator=torch.Generator().manual_seed(1))
    result = recycle_stage0(features, example_importance(), settings.vision_keep, settings.cell_side, GRIDS)
    assert len(result.recycled) == groups
    assert len(result.kept) == kept == LENGTH - pruned + groups
    assert set(NEWLINES.tolist()) <= set(result.kept.tolist()), "newline tokens (importance 1.0) are always kept"
    masks = llm_stage_keeps(result.importance, settings.llm_keeps)
    assert [int(m.sum()) for m in masks] == [from_9, from_18]


def test_recycled_tokens_average_their_cell_by_importance_at_the_best_pruned_place():
    features = torch.arange(12, dtype=torch.float32).view(6, 2)
    importance = torch.tensor([0.1, 0.3, 0.9, 0.2, 0.8, 0.7])
    # One 2x3 grid, cells of 2 tokens: cell (0,0) = tokens 0,1 and 3,4 ... keep 3 of 6 plus one recycling slot.
    result = recycle_stage0(features, importance, keep=0.5, cell_side=2.0, grids=[TokenGrid(0, 2, 3)])
    # Lowest four (0, 3, 1, 5) are pruned: cell (0,0) holds 0, 1, 3; cell (0,1) holds 5.
    assert result.recycled.tolist() == [1, 5]
    assert result.kept.tolist() == [1, 2, 4, 5]
    weights = torch.tensor([0.1, 0.3, 0.2]) / 0.6
    torch.testing.assert_close(result.features[0], (weights[:, None] * features[[0, 1, 3]]).sum(0))
    torch.testing.assert_close(result.features[3], features[5])
    torch.testing.assert_close(result.importance, importance[[1, 2, 4, 5]])


def test_importance_map_is_attention_from_the_relatively_important_tokens_and_never_nan():
    generator = torch.Generator().manual_seed(0)
    queries, keys = torch.randn(10, 2, 4, generator=generator), torch.randn(10, 2, 4, generator=generator)
    attention = torch.stack([(queries[:, h] @ keys[:, h].T * 0.5).softmax(-1) for h in range(2)]).mean(0)
    received = attention.mean(0)
    important = received > 1.2 * received.mean()
    torch.testing.assert_close(importance_map(queries, keys, 0.5, 1.2), attention[important].mean(0))
    # A threshold nothing passes: the release returns NaN; here the most-attended token is the important one.
    fallback = importance_map(queries, keys, 0.5, 1e9)
    torch.testing.assert_close(fallback, attention[received.argmax()])
    assert torch.isfinite(fallback).all() and abs(float(fallback.sum()) - 1) < 1e-5


def test_entropy_is_zero_for_flat_patches_and_the_weight_mixes_it_in():
    flat = torch.zeros(3, 28, 28)
    noisy = torch.rand(3, 28, 28, generator=torch.Generator().manual_seed(0)) * 2 - 1
    pixels = torch.cat([flat, noisy], dim=2)  # 28 x 56 px: 2 rows x 4 columns of 14 px patches, the left half flat
    entropy = patch_entropy(pixels, 14, mean=[0.5] * 3, std=[0.5] * 3)
    assert entropy.shape == (8,) and float(entropy[0]) == 0.0 and float(entropy[3]) > 5
    attention = torch.full((8,), 1 / 8)
    assert torch.equal(combine_importance(attention, entropy, 0.0), attention)
    assert abs(float(combine_importance(attention, entropy, 0.5).sum()) - 1.5) < 1e-5


def test_budget_is_the_retention_averaged_over_layers_and_solves_the_last_ratio():
    presets = VFLOWOPT_PRESETS["llava-onevision-qwen2-7b"]
    for name, expected in (("10%", 0.1000), ("25%", 0.2507), ("50%", 0.5008)):
        assert abs(average_retention(presets[name], 28) - expected) < 5e-4
    ten = presets["10%"]
    assert abs(solve_last_ratio(0.10, ten.vision_keep, [1.0], (9, 18), 28) - 0.6011) < 1e-4
    assert solve_last_ratio(0.9, 0.5, [1.0], (9, 18), 28) == 1.0, "capped at keeping everything"


@pytest.mark.parametrize(
    "fields, message",
    [(dict(vision_keep=0.0), "vision_keep"), (dict(llm_keeps=(1.0,)), "one entry per LLM stage"),
     (dict(llm_layers=(18, 9)), "must increase"), (dict(cell_side=0.5), "cell_side")],
)
def test_bad_settings_name_the_field(fields, message):
    base = dict(vision_keep=0.2, threshold=30.0, cell_side=12.0)
    with pytest.raises(ValueError, match=message):
        VFlowOptSettings(**{**base, **fields})
