"""What a user of FlowCut on LLaVA-NeXT relies on: stock equivalence, batches, generate, caches, loading, training."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaNextForConditionalGeneration, pipeline

from conftest import (
    NEXT_IMAGE_SIZES,
    NEXT_TARGET_NUM,
    PROMPT,
    assert_one_trainer_step_changes_the_projector,
    fresh_flowcut_next_model,
    greedy,
    next_images,
)
from flowcut_hf.modeling.flowcut_compat import cache_of
from flowcut_hf import FlowCutLlavaNextForConditionalGeneration, flowcut, flowcut_processor
from flowcut_hf.modeling.modeling_flowcut_llava_next import stock_token_count
from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next
from flowcut_hf.tiny import synthetic_image

TWO_IMAGE_PROMPT = "USER: <image>\n<image>\nWhat differs between the pictures? ASSISTANT:"
TEXT_ONLY_PROMPT = "USER: Tell me a joke about cats. ASSISTANT:"
BATCH_PROMPTS = [PROMPT, TWO_IMAGE_PROMPT, TEXT_ONLY_PROMPT]


def batch_inputs(processor):
    """A left-padded batch: one image, two images of other sizes (other grids), and no image."""
    return processor(images=next_images(), text=BATCH_PROMPTS, padding=True, return_tensors="pt")


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("settings", [dict(enabled=False), dict(target_num=3000)])
def test_pruning_off_or_a_target_that_keeps_every_token_equals_stock_logits(tiny_next_stock, settings):
    stock, processor = tiny_next_stock
    pruning, _ = fresh_flowcut_next_model(**settings)
    inputs = batch_inputs(processor)
    assert 3000 >= max(stock_token_count(stock.config, size) for size in NEXT_IMAGE_SIZES)
    torch.testing.assert_close(logits(pruning, inputs), logits(stock, inputs), rtol=0, atol=0)
    assert torch.equal(greedy(pruning, inputs), greedy(stock, inputs))


def test_image_features_expose_per_crop_keep_indices_and_schedule(tiny_next_flowcut):
    model, processor = tiny_next_flowcut
    inputs = processor(images=next_images()[:2], text=[PROMPT, PROMPT], padding=True, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
    for image, size in enumerate(NEXT_IMAGE_SIZES[:2]):
        keep = features.keep_indices[image]
        crops = int(inputs["pixel_values"][image].abs().flatten(1).sum(-1).gt(0).sum())
        assert keep.shape == (crops, NEXT_TARGET_NUM // 2)
        assert torch.all(keep[:, 1:] > keep[:, :-1]) and int(keep.min()) >= 0 and int(keep.max()) < 576
        schedule = features.token_schedule[image]
        assert schedule[0] == 577 and schedule[-1] == NEXT_TARGET_NUM // 2 + 1 and len(schedule) == 23
        assert features.placeholder_counts[image] == stock_token_count(model.config, size)
        tokens, sources = features.pooler_output[image], features.token_sources[image]
        assert len(tokens) == len(sources)
        # The base crop's kept tokens come first; the grid tokens follow and never include a newline.
        assert torch.equal(sources[: NEXT_TARGET_NUM // 2, 0], torch.zeros(NEXT_TARGET_NUM // 2, dtype=torch.long))
        assert bool((sources[NEXT_TARGET_NUM // 2 :, 0] >= 1).all())


def test_llm_stage_keeps_target_tokens_per_image_and_later_layers_cache_fewer(tiny_next_flowcut):
    model, processor = tiny_next_flowcut
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs, use_cache=True)
    visual = len(features.pooler_output[0])
    keep = output.llm_keep_indices[0]
    assert keep.numel() == NEXT_TARGET_NUM and torch.all(keep[1:] > keep[:-1]) and int(keep.max()) < visual
    text = inputs["input_ids"].shape[1] - stock_token_count(model.config, NEXT_IMAGE_SIZES[0])
    lengths = [layer.keys.shape[2] for layer in cache_of(output).layers]
    assert lengths == [text + visual] * 2 + [text + NEXT_TARGET_NUM] * 2, "layers 0-1 see every token, 2-3 the kept"
    assert output.logits.shape[1] == text + NEXT_TARGET_NUM
    # input_positions maps every output position back to the input: text tokens keep their own columns.
    positions = output.input_positions[0]
    assert torch.equal(inputs["input_ids"][0, positions[-5:]], inputs["input_ids"][0, -5:])


def test_inputs_embeds_give_what_input_ids_give(tiny_next_flowcut):
    model, processor = tiny_next_flowcut
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    embeds = model.get_input_embeddings()(inputs["input_ids"])
    by_embeds = {**{k: v for k, v in inputs.items() if k != "input_ids"}, "inputs_embeds": embeds}
    torch.testing.assert_close(logits(model, by_embeds), logits(model, inputs), rtol=0, atol=0)


def test_mixed_batch_keeps_a_small_image_whole_and_prunes_a_large_one():
    model, processor = fresh_flowcut_next_model(target_num=1000)
    small, large = synthetic_image(7, size=(336, 100)), synthetic_image(8, size=(600, 800))
    assert stock_token_count(model.config, (336, 100)) <= 1000 < stock_token_count(model.config, (600, 800))
    inputs = processor(images=[small, large], text=[PROMPT, PROMPT], padding=True, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs)
    assert features.prunable == [False, True]
    assert len(features.pooler_output[0]) == stock_token_count(model.config, (336, 100))
    assert len(output.llm_keep_indices[1]) == 1000 < len(features.pooler_output[1])
    stock, _ = build_tiny_llava_next(seed=0)
    alone = processor(images=small, text=PROMPT, return_tensors="pt")
    # The whole image's row computes what the stock model computes for it.
    torch.testing.assert_close(output.logits[0, -1], logits(stock, alone)[0, -1], rtol=1e-4, atol=1e-4)


def test_batch_rows_decode_as_alone_and_cached_decoding_equals_uncached(tiny_next_flowcut):
    """Left padding, different grids and placeholder counts, two images in a row, a text-only row."""
    model, processor = tiny_next_flowcut
    inputs = batch_inputs(processor)
    assert processor.tokenizer.padding_side == "left" and not bool(inputs["attention_mask"][2].all())
    prompt_length = inputs["input_ids"].shape[1]
    cached = greedy(model, inputs, max_new_tokens=6)
    assert torch.equal(cached, greedy(model, inputs, max_new_tokens=6, use_cache=False))
    images = next_images()
    for row, row_images in enumerate([images[:1], images[1:], None]):
        alone = processor(images=row_images, text=BATCH_PROMPTS[row], return_tensors="pt")
        expected = greedy(model, alone, max_new_tokens=6)[0, alone["input_ids"].shape[1] :]
        assert torch.equal(cached[row, prompt_length:], expected), f"row {row} differs from its run alone"
    beams = greedy(model, inputs, max_new_tokens=5, num_beams=3)
    assert torch.equal(beams, greedy(model, inputs, max_new_tokens=5, num_beams=3, use_cache=False))


def test_manual_decoding_loop_passes_flowcut_state_and_matches_generate(tiny_next_flowcut):
    model, processor = tiny_next_flowcut
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    expected = greedy(model, inputs, max_new_tokens=3)[0, inputs["input_ids"].shape[1] :].tolist()
    suppress = model.config.image_token_id
    with torch.no_grad():
        output = model(**inputs, use_cache=True)
        attention_mask = inputs["attention_mask"]
        tokens = []
        for _ in range(3):
            scores = output.logits[:, -1]
            scores[:, suppress] = -float("inf")
            token = scores.argmax(-1, keepdim=True)
            tokens.append(int(token))
            attention_mask = torch.cat([attention_mask, torch.ones_like(token)], dim=1)
            state = output.flowcut_state
            output = model(
                input_ids=token, attention_mask=attention_mask, cache=cache_of(output), flowcut_state=state
            )
        assert tokens == expected
        with pytest.raises(ValueError, match="flowcut_state"):
            model(input_ids=token, attention_mask=torch.cat([attention_mask, torch.ones_like(token)], 1),
                  cache=cache_of(output))


def test_hidden_states_and_attentions_are_returned_per_layer(tiny_next_flowcut):
    model, processor = tiny_next_flowcut
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        output = model(**inputs, output_hidden_states=True)
    lengths = [h.shape[1] for h in output.hidden_states]
    assert len(lengths) == model.config.text_config.num_hidden_layers + 1
    assert lengths[0] == lengths[1] == lengths[2] > lengths[3] == lengths[4] == output.logits.shape[1]


def test_flowcut_changes_only_the_given_instance_and_keeps_the_stock_processor(tiny_next_stock):
    first, processor = build_tiny_llava_next(seed=2)
    second, _ = build_tiny_llava_next(seed=2)
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    before = logits(second, inputs)
    assert flowcut(first) is first and type(first) is FlowCutLlavaNextForConditionalGeneration
    assert first.config.flowcut_target_num == 160 and first.config.flowcut_llm_prune_layer == 1
    assert type(second) is LlavaNextForConditionalGeneration
    torch.testing.assert_close(logits(second, inputs), before, rtol=0, atol=0)
    assert flowcut_processor(processor, target_num=64) is processor


def test_pipeline_image_text_to_text_from_a_saved_folder(saved_next_folder, image_files):
    generator = pipeline("image-text-to-text", model=str(saved_next_folder), trust_remote_code=True)
    # Remote code lives in its own module copy, so compare class names, not types.
    assert type(generator.model).__name__ == "FlowCutLlavaNextForConditionalGeneration"
    result = generator(images=str(image_files[0]), text=PROMPT, max_new_tokens=4,
                       generate_kwargs={"suppress_tokens": [generator.model.config.image_token_id]})
    assert isinstance(result[0]["generated_text"], str) and result[0]["generated_text"].startswith(PROMPT)


def test_loads_in_bfloat16_and_with_device_map_auto_and_prunes(saved_next_folder, tiny_next_flowcut, tmp_path):
    reference, processor = tiny_next_flowcut
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    expected = reference(**inputs).llm_keep_indices[0]
    half, info = AutoModelForImageTextToText.from_pretrained(
        saved_next_folder, trust_remote_code=True, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"] and half.dtype == torch.bfloat16
    with torch.no_grad():
        output = half(**{**inputs, "pixel_values": inputs["pixel_values"].to(torch.bfloat16)})
    assert len(output.llm_keep_indices[0]) == NEXT_TARGET_NUM and torch.isfinite(output.logits).all()
    assert greedy(half, inputs, max_new_tokens=3).shape[1] == inputs["input_ids"].shape[1] + 3

    mapped, info = AutoModelForImageTextToText.from_pretrained(
        saved_next_folder, trust_remote_code=True, device_map="auto", output_loading_info=True,
        max_memory={"cpu": "300KB"}, offload_folder=tmp_path / "offload",
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert "disk" in set(mapped.hf_device_map.values())
    with torch.no_grad():
        output = mapped(**inputs)
    assert torch.equal(output.llm_keep_indices[0], expected)
    torch.testing.assert_close(output.logits, logits(reference, inputs))


def test_training_step_with_pruning_in_the_loop(tmp_path):
    model, processor = fresh_flowcut_next_model(seed=4)
    model.train()
    inputs = processor(images=next_images()[0], text=PROMPT + " a red cat", return_tensors="pt")
    answer_columns = list(range(inputs["input_ids"].shape[1] - 10, inputs["input_ids"].shape[1]))
    labels = torch.full_like(inputs["input_ids"], -100)
    labels[0, answer_columns] = inputs["input_ids"][0, answer_columns]
    output = model(**inputs, labels=labels)

    # The loss is that of the pruned sequence: each answer token is predicted at the output position just before
    # the one holding it (input_positions maps output positions back to input columns).
    positions = output.input_positions[0].tolist()
    predicted_at = [positions.index(column) - 1 for column in answer_columns]
    expected = torch.nn.functional.cross_entropy(output.logits[0, predicted_at].float(), labels[0, answer_columns])
    torch.testing.assert_close(output.loss, expected)
    output.loss.backward()
    for parameter in (model.model.multi_modal_projector.linear_1.weight, model.model.language_model.layers[3].mlp.up_proj.weight):
        assert parameter.grad is not None and torch.isfinite(parameter.grad).all() and parameter.grad.abs().sum() > 0
    model.zero_grad()

    example = {"input_ids": inputs["input_ids"][0], "attention_mask": inputs["attention_mask"][0],
               "pixel_values": inputs["pixel_values"][0], "image_sizes": inputs["image_sizes"][0], "labels": labels[0]}
    assert_one_trainer_step_changes_the_projector(model, example, tmp_path)


def test_attention_backends_select_the_same_tokens_and_half_precision_stays_finite(weightless_attention):
    """Flash attention never returns attention weights; FlowCut must not need them (checked with a stand-in)."""
    weightless, query_lengths = weightless_attention
    query_lengths.clear()
    selections = {}
    for implementation in ("eager", "sdpa", weightless):
        model, processor = fresh_flowcut_next_model(seed=3)
        model.config.vision_config._attn_implementation = implementation
        model.config.text_config._attn_implementation = implementation
        inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
        with torch.no_grad():
            features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
            output = model(**inputs)
        selections[implementation] = (features.keep_indices[0], output.llm_keep_indices[0])
    assert 577 in query_lengths and NEXT_TARGET_NUM // 2 + 1 in query_lengths, "the stand-in must run the vision tower"
    assert output.logits.shape[1] in query_lengths, "the stand-in must run the layers after the LLM stage"
    for implementation in ("sdpa", weightless):
        for expected, actual in zip(selections["eager"], selections[implementation]):
            assert torch.equal(expected, actual), implementation

    for dtype in (torch.float16, torch.bfloat16):
        model, processor = fresh_flowcut_next_model(seed=3)
        model.to(dtype)
        inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
        with torch.no_grad():
            output = model(**{**inputs, "pixel_values": inputs["pixel_values"].to(dtype)})
        assert torch.isfinite(output.logits).all() and len(output.llm_keep_indices[0]) == NEXT_TARGET_NUM


@pytest.mark.parametrize("bad", [0, 1, -4, 2.5, "64", True, None])
def test_bad_target_is_a_value_error_naming_the_fix(bad):
    model, _ = build_tiny_llava_next(seed=0)
    with pytest.raises(ValueError, match="flowcut_target_num"):
        flowcut(model, target_num=bad)
    assert type(model) is LlavaNextForConditionalGeneration, "a rejected call must leave the model untouched"
    flowcut(model, target_num=16)
    if bad is not None:  # None means "leave unchanged" for configure_flowcut
        with pytest.raises(ValueError, match="flowcut_target_num"):
            model.configure_flowcut(target_num=bad)
    assert model.config.flowcut_target_num == 16


def test_settings_and_inputs_the_model_cannot_run_are_value_errors(tiny_next_flowcut, tmp_path):
    model, processor = fresh_flowcut_next_model()
    inputs = processor(images=next_images()[0], text=PROMPT, return_tensors="pt")
    with pytest.raises(ValueError, match="target_num // 2"):
        model.configure_flowcut(target_num=1)
    with pytest.raises(ValueError, match="flowcut_llm_prune_layer"):
        flowcut(build_tiny_llava_next(seed=0)[0], llm_prune_layer=-1)
    model.configure_flowcut(llm_prune_layer=3)
    with pytest.raises(ValueError, match="choose 0 to 2"):
        model(**inputs)
    model.configure_flowcut(llm_prune_layer=1)

    missing_placeholders = {**inputs, "input_ids": inputs["input_ids"][:, 100:], "attention_mask": inputs["attention_mask"][:, 100:]}
    with pytest.raises(ValueError, match="LlavaNextProcessor"):
        model(**missing_placeholders)
    with pytest.raises(ValueError, match="prefill_chunk_size=None"):
        greedy(model, inputs, max_new_tokens=2, prefill_chunk_size=64)
    with pytest.raises(ValueError, match="DynamicCache"):
        greedy(model, inputs, max_new_tokens=2, cache_implementation="static")
    with torch.no_grad():
        first = model(**inputs, use_cache=True)
        with pytest.raises(ValueError, match="first forward call"):
            model(**inputs, cache=cache_of(first), flowcut_state=first.flowcut_state)

    full = build_tiny_llava_next(seed=0)[0]
    full.config.vision_feature_select_strategy = "full"
    flowcut(full, target_num=32)
    with pytest.raises(ValueError, match="vision_feature_select_strategy='default'"):
        full(**inputs)
