"""VFlowOpt on LLaVA-1.5 and LLaVA-NeXT: the same stage-0 and LLM-stage code as on LLaVA-OneVision, with CLIP's CLS
token, the stock processors, batches, caches, attention backends and remote-code loading."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaForConditionalGeneration, LlavaNextForConditionalGeneration

from conftest import PROMPT, greedy, load_saved_folder
from flowcut_hf.modeling.flowcut_compat import cache_of
from flowcut_hf import flowcut, flowcut_processor, prune
from flowcut_hf.modeling.vflowopt_core import preset_for_depth
from flowcut_hf.families.llava.builtin import build_tiny_llava
from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
from flowcut_hf.tiny import synthetic_image

TWO_IMAGES = "USER: <image> and <image>\nCompare them. ASSISTANT:"
TEXT_ONLY = "USER: Tell me a joke. ASSISTANT:"
SIZES = {"llava": [(336, 336), (336, 336), (336, 336)], "llava_next": [(600, 800), (330, 1000), (500, 300)]}


def build(family: str, seed: int = 0, **overrides):
    if family == "llava":
        return build_tiny_llava(seed=seed, num_text_layers=4, **overrides)
    return build_tiny_llava_next(seed=seed, **overrides)


def fresh(family: str, seed: int = 0, preset: str = "10%", **settings):
    model, processor = build(family, seed)
    return prune(model, method="vflowopt", preset=preset, **settings), processor


def one_image(processor, family: str, index: int = 0):
    return processor(text=[PROMPT], images=[synthetic_image(index, SIZES[family][index])], return_tensors="pt")


@pytest.fixture(scope="module", params=["llava", "llava_next"])
def pruned(request):
    family = request.param
    model, processor = fresh(family)
    stock, _ = build(family)
    return family, model, stock, processor


def test_pruning_off_equals_stock_and_flowcut_switches_back(pruned):
    family, model, stock, processor = pruned
    inputs = one_image(processor, family)
    model.configure_vflowopt(enabled=False)
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, rtol=0, atol=0)
    finally:
        model.configure_vflowopt(enabled=True)
    other, _ = fresh(family, seed=0)
    flowcut(other)
    assert other.config.pruning_method == "flowcut"


def test_stage_zero_and_llm_stages_follow_the_preset(pruned):
    family, model, _, processor = pruned
    settings = preset_for_depth("10%", model.config.text_config.num_hidden_layers)
    assert tuple(model.config.vflowopt_llm_layers) == settings.llm_layers == (1, 3)
    inputs = one_image(processor, family)
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], **({"image_sizes": inputs["image_sizes"]} if family == "llava_next" else {}))
        output = model(**inputs)
    length = features.placeholder_counts[0]
    assert length == int((inputs["input_ids"] == model.config.image_token_id).sum())
    removed = round(length * (1 - settings.vision_keep)) + int(length / settings.cell_side**2)
    kept = len(features.pooler_output[0])
    assert kept == length - removed + len(features.recycled_positions[0]) < length
    after_1 = kept - round(kept * (1 - settings.llm_keeps[0]))
    after_3 = after_1 - round(after_1 * (1 - settings.llm_keeps[1]))
    text = inputs["input_ids"].shape[1] - length
    lengths = [cache_of(output).get_seq_length(layer) for layer in range(4)]
    assert lengths == [text + kept, text + after_1, text + after_1, text + after_3]
    if family == "llava_next":
        # newline tokens (importance 1.0, as LLaVA-OneVision's) are never dropped by stage 0
        importance = features.importance[0]
        assert set((importance == 1.0).nonzero().squeeze(-1).tolist()) <= set(features.kept_positions[0].tolist())


def test_batch_rows_decode_as_alone_and_cached_equals_uncached(pruned):
    """Left padding, images of different sizes, two images in one prompt, and a text-only prompt."""
    family, model, _, processor = pruned
    images = [synthetic_image(i, size) for i, size in enumerate(SIZES[family])]
    rows = [(PROMPT, images[:1]), (TWO_IMAGES, images[1:]), (TEXT_ONLY, None)]
    processor.tokenizer.padding_side = "left"
    inputs = processor(text=[text for text, _ in rows], images=images, padding=True, return_tensors="pt")
    assert not bool(inputs["attention_mask"][2].all())
    width = inputs["input_ids"].shape[1]
    cached = greedy(model, inputs, max_new_tokens=4)
    assert torch.equal(cached, greedy(model, inputs, max_new_tokens=4, use_cache=False))
    for index, (text, row_images) in enumerate(rows):
        alone = processor(text=[text], images=row_images, return_tensors="pt")
        expected = greedy(model, alone, max_new_tokens=4)[0, alone["input_ids"].shape[1] :]
        assert torch.equal(cached[index, width:], expected), f"row {index} differs from its run alone"


def test_attention_backends_agree_and_half_precision_stays_finite(weightless_attention):
    weightless, query_lengths = weightless_attention
    for family in ("llava", "llava_next"):
        kept = {}
        for implementation in ("eager", "sdpa", weightless):
            model, processor = fresh(family, seed=3)
            model.config.vision_config._attn_implementation = implementation
            model.config.text_config._attn_implementation = implementation
            inputs = one_image(processor, family)
            query_lengths.clear()
            with torch.no_grad():
                output = model(**inputs)
            kept[implementation] = (output.image_outputs.kept_positions[0], output.input_positions[0])
        assert output.logits.shape[1] in query_lengths, "the stand-in must run the layers after the last LLM stage"
        for implementation in ("sdpa", weightless):
            assert all(torch.equal(a, b) for a, b in zip(kept["eager"], kept[implementation])), (family, implementation)
        for dtype in (torch.float16, torch.bfloat16):
            model, processor = fresh(family, seed=3)
            model.to(dtype)
            inputs = one_image(processor, family)
            with torch.no_grad():
                output = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)})
            assert torch.isfinite(output.logits).all(), (family, dtype)


def test_llava_takes_the_stock_processor_and_names_the_fix_for_flowcuts():
    model, processor = fresh("llava")
    counted = flowcut_processor(processor, target_num=64)
    inputs = counted(text=[PROMPT], images=[synthetic_image(0)], return_tensors="pt")
    with pytest.raises(ValueError, match="stock processor"):
        model(**inputs)
    with pytest.raises(ValueError, match="reach past"):
        prune(build("llava")[0], method="vflowopt", llm_layers=[2, 9], llm_keeps=[1.0, 0.5])


@pytest.mark.parametrize("family,stock_class", [("llava", LlavaForConditionalGeneration), ("llava_next", LlavaNextForConditionalGeneration)])
def test_saved_folder_runs_vflowopt_as_remote_code_and_stock_without(family, stock_class, tmp_path):
    model, processor = fresh(family)
    folder = tmp_path / f"{family}-vflowopt10"
    model.save_pretrained(folder)
    inputs = dict(one_image(processor, family))
    with torch.no_grad():
        expected = model(**inputs).logits
    assert expected.shape[1] < inputs["input_ids"].shape[1]
    for trust in (True, False):
        result, logits = load_saved_folder(folder, inputs, trust, tmp_path)
        assert result["keys_ok"]
        if trust:
            assert result["class"] == type(model).__name__ and result["method"] == "vflowopt"
            torch.testing.assert_close(logits, expected)
        else:
            assert result["class"] == stock_class.__name__
            assert result["length"] == inputs["input_ids"].shape[1], "stock keeps every visual token"
