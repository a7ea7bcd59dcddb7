"""What a user of VFlowOpt on LLaVA-OneVision relies on: stock equivalence, the stage counts, per-layer KV lengths,
batches, generate and caches, attention backends and remote-code loading."""

from __future__ import annotations

import pytest
import torch
from transformers import LlavaOnevisionForConditionalGeneration

from conftest import load_saved_folder
from flowcut_hf.modeling.flowcut_compat import cache_of
from flowcut_hf import flowcut, prune
from flowcut_hf.modeling.configuration_flowcut_llava_onevision import ONEVISION_PRESETS
from flowcut_hf.families.llava_onevision.builtin import build_tiny_llava_onevision
from flowcut_hf.tiny import synthetic_image

SQUARE = (768, 768)  # a square image on the 2x2 grid: 729 + 54 x 55 = 3699 packed tokens (spec §2.2)
# spec §2.2's counts (after stage 0, from layer 9, from layer 18). Which cells get a recycled token depends on the map;
# at 10% and 25% every cell loses tokens, so the counts are the spec's whatever the map (50%: see the core test).
SPEC_COUNTS = {"10%": (439, 439, 264), "25%": (986, 970, 851)}


def chat(processor, images: int, question: str = "What is in the picture?") -> str:
    content = [{"type": "image"}] * images + [{"type": "text", "text": question}]
    return processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)


def fresh(seed: int = 0, preset: str = "10%", **settings):
    model, processor = build_tiny_llava_onevision(seed=seed)
    return prune(model, method="vflowopt", preset=preset, **settings), processor


@pytest.fixture(scope="module")
def onevision():
    model, processor = fresh()
    stock, _ = build_tiny_llava_onevision(seed=0)
    return model, stock, processor


def greedy(model, inputs, max_new_tokens: int = 4, **kwargs) -> torch.Tensor:
    with torch.no_grad():
        return model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False, **kwargs)


def test_pruning_off_equals_stock(onevision):
    model, stock, processor = onevision
    inputs = processor(text=[chat(processor, 1)], images=[synthetic_image(0, SQUARE)], return_tensors="pt")
    model.configure_vflowopt(enabled=False)
    try:
        with torch.no_grad():
            torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, rtol=0, atol=0)
    finally:
        model.configure_vflowopt(enabled=True)


@pytest.mark.parametrize("preset", ["10%", "25%", "50%"])
def test_each_preset_prunes_the_square_image_stage_by_stage(preset):
    model, processor = fresh(preset=preset)
    settings = ONEVISION_PRESETS[preset]
    inputs = processor(text=[chat(processor, 1)], images=[synthetic_image(0, SQUARE)], return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        output = model(**inputs, use_cache=True)
    length = features.placeholder_counts[0]
    assert length == 3699
    removed = round(length * (1 - settings.vision_keep)) + int(length / settings.cell_side**2)
    kept = len(features.pooler_output[0])
    assert kept == length - removed + len(features.recycled_positions[0])
    newlines = torch.tensor([729 + row * 55 + 54 for row in range(54)])
    assert set(newlines.tolist()) <= set(features.kept_positions[0].tolist()), "newlines (importance 1.0) stay"
    after_9 = kept - round(kept * (1 - settings.llm_keeps[0]))
    after_18 = after_9 - round(after_9 * (1 - settings.llm_keeps[1]))
    text = inputs["input_ids"].shape[1] - length
    lengths = [cache_of(output).get_seq_length(layer) for layer in range(28)]
    assert lengths == [text + kept] * 9 + [text + after_9] * 9 + [text + after_18] * 10
    if preset in SPEC_COUNTS:
        assert (kept, after_9, after_18) == SPEC_COUNTS[preset]


def test_batch_rows_decode_as_alone_and_cached_equals_uncached(onevision):
    """Left padding, two image sizes, two images in one prompt (one crop each), and a text-only prompt."""
    model, _, processor = onevision
    rows = [(chat(processor, 1), [synthetic_image(0, SQUARE)]), (chat(processor, 2), [synthetic_image(1, (400, 600)), synthetic_image(2, (500, 300))]),
            (chat(processor, 0, "Tell me a joke."), None)]
    images = [image for _, row_images in rows for image in (row_images or [])]
    inputs = processor(text=[text for text, _ in rows], images=images, padding=True, return_tensors="pt")
    assert not bool(inputs["attention_mask"][2].all())
    width = inputs["input_ids"].shape[1]
    cached = greedy(model, inputs)
    assert torch.equal(cached, greedy(model, inputs, use_cache=False))
    for index, (text, row_images) in enumerate(rows):
        alone = processor(text=[text], images=row_images, return_tensors="pt")
        expected = greedy(model, alone)[0, alone["input_ids"].shape[1] :]
        assert torch.equal(cached[index, width:], expected), f"row {index} differs from its run alone"


def test_attention_backends_agree_and_half_precision_stays_finite(weightless_attention):
    weightless, query_lengths = weightless_attention
    kept = {}
    for implementation in ("eager", "sdpa", weightless):
        model, processor = fresh(seed=3)
        model.config.vision_config._attn_implementation = implementation
        model.config.text_config._attn_implementation = implementation
        inputs = processor(text=[chat(processor, 1)], images=[synthetic_image(0, SQUARE)], return_tensors="pt")
        query_lengths.clear()
        with torch.no_grad():
            features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
            output = model(**inputs)
        kept[implementation] = (features.kept_positions[0], output.input_positions[0])
    assert output.logits.shape[1] in query_lengths, "the stand-in must run the layers after the last LLM stage"
    for implementation in ("sdpa", weightless):
        assert all(torch.equal(a, b) for a, b in zip(kept["eager"], kept[implementation])), implementation
    for dtype in (torch.float16, torch.bfloat16):
        model, processor = fresh(seed=3)
        model.to(dtype)
        inputs = processor(text=[chat(processor, 1)], images=[synthetic_image(0, SQUARE)], return_tensors="pt")
        with torch.no_grad():
            output = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)})
        assert torch.isfinite(output.logits).all()


def test_settings_choose_the_method_and_bad_values_name_the_fix():
    model, _ = build_tiny_llava_onevision(seed=0)
    with pytest.raises(ValueError, match="released"):
        prune(model, method="vflowopt", preset="5%")
    with pytest.raises(ValueError, match="one entry per LLM stage"):
        prune(model, method="vflowopt", llm_keeps=[0.5])
    with pytest.raises(ValueError, match="reach past"):
        prune(model, method="vflowopt", llm_layers=[9, 40], llm_keeps=[1.0, 0.5])
    assert type(model) is LlavaOnevisionForConditionalGeneration, "a rejected call must leave the model untouched"
    prune(model, method="vflowopt", preset="25%", threshold=10.0)
    assert model.config.pruning_method == "vflowopt" and model.config.vflowopt_threshold == 10.0
    assert model.config.vflowopt_vision_keep == ONEVISION_PRESETS["25%"].vision_keep
    with pytest.raises(ValueError, match="vflowopt_vision_keep"):
        model.configure_vflowopt(vision_keep=1.5)


def test_saved_folder_loads_as_remote_code_in_a_clean_process_and_as_stock_without(onevision, tmp_path):
    model, _, processor = onevision
    folder = tmp_path / "onevision-vflowopt10"
    model.save_pretrained(folder)
    inputs = dict(processor(text=[chat(processor, 1)], images=[synthetic_image(0, SQUARE)], return_tensors="pt"))
    with torch.no_grad():
        expected = model(**inputs).logits
    assert sorted(p.name for p in folder.glob("*.py")) == [
        "configuration_flowcut_llava_onevision.py", "flowcut_compat.py", "flowcut_core.py", "flowcut_llm_stage.py", "flowcut_remote_code.py",
        "flowcut_settings.py", "modeling_flowcut_llava_onevision.py", "vflowopt_core.py",
    ]
    for trust, expected_class in ((True, "FlowCutLlavaOnevisionForConditionalGeneration"), (False, "LlavaOnevisionForConditionalGeneration")):
        result, logits = load_saved_folder(folder, inputs, trust, tmp_path)
        assert result["class"] == expected_class and result["keys_ok"]
        if trust:
            torch.testing.assert_close(logits, expected)
        else:
            assert result["length"] == inputs["input_ids"].shape[1], "stock keeps every visual token"


def test_beam_search_and_several_returned_sequences_expand_each_prompts_images(onevision):
    model, _, processor = onevision
    images = [synthetic_image(0, SQUARE), synthetic_image(1, (400, 600)), synthetic_image(2, (500, 300))]
    inputs = processor(text=[chat(processor, 1), chat(processor, 2)], images=images, padding=True, return_tensors="pt")
    beams = greedy(model, inputs, max_new_tokens=3, num_beams=2)
    assert torch.equal(beams, greedy(model, inputs, max_new_tokens=3, num_beams=2, use_cache=False))
    several = greedy(model, inputs, max_new_tokens=2, num_beams=2, num_return_sequences=2)
    assert several.shape[0] == 4 and torch.equal(several[0::2, :-2], inputs["input_ids"])


def test_flowcut_on_onevision_prunes_crops_then_the_llm_and_switches_back_to_stock():
    """FlowCut at VFlowOpt's matched count: 185 patches per crop out of SigLIP, 370 tokens after decoder layer 1."""
    model, processor = build_tiny_llava_onevision(seed=0)
    stock, _ = build_tiny_llava_onevision(seed=0)
    flowcut(model, target_num=370)
    assert model.config.pruning_method == "flowcut"
    inputs = processor(text=[chat(processor, 1)], images=[synthetic_image(0, SQUARE)], return_tensors="pt")
    text = inputs["input_ids"].shape[1] - 3699
    with torch.no_grad():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_sizes"])
        output = model(**inputs)
        assert features.keep_indices[0].shape == (5, 185) and features.token_schedule[0][-1] == 185
        assert len(features.pooler_output[0]) == 5 * 185, "the square image's crops lie inside the unpadded grid"
        lengths = [cache_of(output).get_seq_length(layer) for layer in range(28)]
        assert lengths == [text + 925] * 2 + [text + 370] * 26
        rows = [(chat(processor, 1), [synthetic_image(0, SQUARE)]), (chat(processor, 0, "Tell me a joke."), None)]
        batch = processor(text=[t for t, _ in rows], images=[synthetic_image(0, SQUARE)], padding=True, return_tensors="pt")
        cached = greedy(model, batch, max_new_tokens=3)
        assert torch.equal(cached, greedy(model, batch, max_new_tokens=3, use_cache=False))
        for index, (text_row, images) in enumerate(rows):
            alone = processor(text=[text_row], images=images, return_tensors="pt")
            assert torch.equal(cached[index, batch["input_ids"].shape[1]:], greedy(model, alone, max_new_tokens=3)[0, alone["input_ids"].shape[1]:])
        model.configure_flowcut(target_num=4000)  # more than the image has: kept whole, the stock computation
        torch.testing.assert_close(model(**inputs).logits, stock(**inputs).logits, rtol=0, atol=0)
    prune(model, method="vflowopt")
    assert model.config.pruning_method == "vflowopt"
