"""What a user of the FlowCut LLaVA model relies on: stock equivalence, generate, pipelines, loading, training."""

from __future__ import annotations

import pytest
import torch
from transformers import AutoModelForImageTextToText, LlavaForConditionalGeneration, pipeline

from conftest import PROMPT, TARGET_NUM, assert_one_trainer_step_changes_the_projector, fresh_flowcut_model, greedy
from flowcut_hf import FlowCutLlavaForConditionalGeneration, flowcut, flowcut_processor
from flowcut_hf.families.llava.builtin import build_tiny_llava
from flowcut_hf.tiny import synthetic_image

TWO_IMAGE_PROMPT = "USER: <image>\n<image>\nWhat differs between the pictures? ASSISTANT:"
TEXT_ONLY_PROMPT = "USER: Tell me a joke. ASSISTANT:"


def logits(model, inputs):
    with torch.no_grad():
        return model(**inputs).logits


@pytest.mark.parametrize("settings", [dict(target_num=64, enabled=False), dict(target_num=576), dict(target_num=1000)])
def test_pruning_off_or_target_at_full_count_equals_stock_logits(settings):
    stock, processor = build_tiny_llava(seed=1)
    pruning, _ = build_tiny_llava(seed=1)
    flowcut(pruning, **settings)
    fc_processor = flowcut_processor(processor, **settings)
    inputs = fc_processor(images=synthetic_image(3), text=PROMPT, return_tensors="pt")
    assert int((inputs["input_ids"] == stock.config.image_token_id).sum()) == 576
    torch.testing.assert_close(logits(pruning, inputs), logits(stock, inputs), rtol=0, atol=0)


def test_image_features_carry_sorted_keep_indices(tiny_flowcut):
    model, processor = tiny_flowcut
    pixel_values = processor.image_processor(images=[synthetic_image(0), synthetic_image(1)], return_tensors="pt")[
        "pixel_values"
    ]
    with torch.no_grad():
        output = model.model.get_image_features(pixel_values=pixel_values)
    assert len(output.keep_indices) == 2 and len(output.pooler_output) == 2
    for keep, features in zip(output.keep_indices, output.pooler_output):
        assert keep.dtype == torch.long and keep.shape == (TARGET_NUM,)
        assert torch.all(keep[1:] > keep[:-1]) and 0 <= int(keep.min()) and int(keep.max()) < 576
        assert features.shape == (TARGET_NUM, model.config.text_config.hidden_size)
    assert output.token_schedule[0] == 577 and output.token_schedule[-1] == TARGET_NUM + 1
    assert len(output.token_schedule) == 23  # CLIP layer 23 is after LLaVA's feature layer (-2) and never runs


def test_flowcut_changes_only_the_given_instance():
    first, processor = build_tiny_llava(seed=2)
    second, _ = build_tiny_llava(seed=2)
    inputs = processor(images=synthetic_image(0), text=PROMPT, return_tensors="pt")
    before = logits(second, inputs)
    flowcut(first, target_num=32)
    assert type(first) is FlowCutLlavaForConditionalGeneration
    assert type(second) is LlavaForConditionalGeneration and not hasattr(second.config, "flowcut_target_num")
    torch.testing.assert_close(logits(second, inputs), before, rtol=0, atol=0)
    assert type(LlavaForConditionalGeneration(second.config)) is LlavaForConditionalGeneration


def test_generate_left_padded_batch_with_two_images_and_text_only_prompt(tiny_flowcut):
    model, processor = tiny_flowcut
    inputs = processor(
        images=[synthetic_image(0), synthetic_image(1)],
        text=[TWO_IMAGE_PROMPT, TEXT_ONLY_PROMPT],
        padding=True,
        return_tensors="pt",
    )
    assert processor.tokenizer.padding_side == "left" and inputs["attention_mask"][1, 0] == 0
    assert int((inputs["input_ids"][0] == model.config.image_token_id).sum()) == 2 * TARGET_NUM

    cached = greedy(model, inputs, max_new_tokens=8)
    uncached = greedy(model, inputs, max_new_tokens=8, use_cache=False)
    assert torch.equal(cached, uncached)

    # Each row must decode as it would alone: padding and batch-mates must not leak into another prompt.
    alone = processor(text=TEXT_ONLY_PROMPT, return_tensors="pt")
    alone_tokens = greedy(model, alone, max_new_tokens=8)[0, alone["input_ids"].shape[1] :]
    assert torch.equal(cached[1, inputs["input_ids"].shape[1] :], alone_tokens)


def test_pipeline_image_text_to_text_from_saved_folder(saved_flowcut_folder):
    pipe = pipeline("image-text-to-text", model=str(saved_flowcut_folder), trust_remote_code=True)
    assert type(pipe.model).__name__ == "FlowCutLlavaForConditionalGeneration"
    messages = [{"role": "user", "content": [{"type": "image", "image": synthetic_image(0)}, {"type": "text", "text": "Describe."}]}]
    result = pipe(text=messages, max_new_tokens=4, generate_kwargs={"do_sample": False, "suppress_tokens": [pipe.model.config.image_token_id]})
    assert result[0]["generated_text"][-1]["role"] == "assistant"
    assert isinstance(result[0]["generated_text"][-1]["content"], str)


def test_stock_processor_input_fails_at_once_naming_the_fix(tiny_flowcut, tiny_stock):
    model, _ = tiny_flowcut
    _, stock_processor = tiny_stock
    inputs = stock_processor(images=synthetic_image(0), text=PROMPT, return_tensors="pt")
    with pytest.raises(ValueError, match=r"576 image placeholder.*trust_remote_code=True"):
        model(**inputs)
    with pytest.raises(ValueError, match="flowcut_processor"):
        greedy(model, inputs)


@pytest.mark.parametrize("placeholders", [0, TARGET_NUM - 1, 2 * TARGET_NUM])
def test_placeholder_count_not_matching_images_is_a_value_error(tiny_flowcut, placeholders):
    model, processor = tiny_flowcut
    pixel_values = processor.image_processor(images=synthetic_image(0), return_tensors="pt")["pixel_values"]
    text_ids = processor.tokenizer("USER: hi ASSISTANT:", return_tensors="pt")["input_ids"]
    image_ids = torch.full((1, placeholders), model.config.image_token_id)
    input_ids = torch.cat([text_ids[:, :3], image_ids, text_ids[:, 3:]], dim=1)
    with pytest.raises(ValueError, match="placeholder"):
        model(input_ids=input_ids, pixel_values=pixel_values)


@pytest.mark.parametrize("bad", [0, -3, 2.5, "64", True, None])
def test_bad_target_num_is_a_value_error(bad):
    model, processor = build_tiny_llava(seed=0)
    with pytest.raises(ValueError, match="flowcut_target_num"):
        flowcut(model, target_num=bad)
    assert type(model) is LlavaForConditionalGeneration, "a rejected call must leave the model untouched"
    with pytest.raises(ValueError, match="flowcut_target_num"):
        flowcut_processor(processor, target_num=bad)
    flowcut(model, target_num=16)
    if bad is not None:  # None means "leave unchanged" for configure_flowcut
        with pytest.raises(ValueError, match="flowcut_target_num"):
            model.configure_flowcut(target_num=bad)
    assert model.config.flowcut_target_num == 16


def test_retained_count_overridden_at_load_and_changed_on_a_loaded_model(saved_flowcut_folder, tiny_flowcut):
    _, processor = tiny_flowcut
    model = AutoModelForImageTextToText.from_pretrained(saved_flowcut_folder, trust_remote_code=True, flowcut_target_num=32)
    pixel_values = processor.image_processor(images=synthetic_image(0), return_tensors="pt")["pixel_values"]
    with torch.no_grad():
        assert model.model.get_image_features(pixel_values=pixel_values).keep_indices[0].numel() == 32
        model.configure_flowcut(target_num=100)
        assert model.model.get_image_features(pixel_values=pixel_values).keep_indices[0].numel() == 100
        model.configure_flowcut(enabled=False)
        assert model.model.get_image_features(pixel_values=pixel_values).pooler_output[0].shape[0] == 576
    with pytest.raises(ValueError, match="flowcut_target_num"):
        AutoModelForImageTextToText.from_pretrained(saved_flowcut_folder, trust_remote_code=True, flowcut_target_num=0)


def test_loads_in_bfloat16_and_prunes(saved_flowcut_folder, tiny_flowcut):
    _, processor = tiny_flowcut
    model, info = AutoModelForImageTextToText.from_pretrained(
        saved_flowcut_folder, trust_remote_code=True, dtype=torch.bfloat16, output_loading_info=True
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    assert model.dtype == torch.bfloat16
    inputs = processor(images=synthetic_image(0), text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"].to(torch.bfloat16))
    assert features.keep_indices[0].numel() == TARGET_NUM
    output = greedy(model, inputs, max_new_tokens=3)
    assert output.shape[1] == inputs["input_ids"].shape[1] + 3


@pytest.mark.parametrize("max_memory", [None, {"cpu": "300KB"}])
def test_loads_with_device_map_auto_and_prunes(saved_flowcut_folder, tiny_flowcut, tmp_path, max_memory):
    reference, processor = tiny_flowcut
    model, info = AutoModelForImageTextToText.from_pretrained(
        saved_flowcut_folder, trust_remote_code=True, device_map="auto", output_loading_info=True,
        max_memory=max_memory, offload_folder=tmp_path / "offload",
    )
    assert not info["missing_keys"] and not info["unexpected_keys"]
    if max_memory is not None:
        # With no room in memory, accelerate offloads weights to disk and streams them in through its hooks.
        assert "disk" in set(model.hf_device_map.values())
    inputs = processor(images=synthetic_image(0), text=PROMPT, return_tensors="pt")
    with torch.no_grad():
        assert model.model.get_image_features(pixel_values=inputs["pixel_values"]).keep_indices[0].numel() == TARGET_NUM
    torch.testing.assert_close(logits(model, inputs), logits(reference, inputs))


def test_training_forward_backward_and_trainer_step(tmp_path):
    model, processor = fresh_flowcut_model(target_num=32, seed=4)
    model.train()
    inputs = processor(images=synthetic_image(0), text=PROMPT + " a cat", return_tensors="pt")
    labels = inputs["input_ids"].clone()
    labels[labels == model.config.image_token_id] = -100
    output = model(**inputs, labels=labels)
    assert torch.isfinite(output.loss)
    output.loss.backward()
    projector_grad = model.model.multi_modal_projector.linear_1.weight.grad
    assert projector_grad is not None and torch.isfinite(projector_grad).all() and projector_grad.abs().sum() > 0
    model.zero_grad()

    example = {"input_ids": inputs["input_ids"][0], "attention_mask": inputs["attention_mask"][0],
               "pixel_values": inputs["pixel_values"][0], "labels": labels[0]}
    assert_one_trainer_step_changes_the_projector(model, example, tmp_path)


def test_vision_tower_on_a_backend_without_attention_weights_selects_like_eager(weightless_attention):
    """Flash attention never returns the attention matrix; FlowCut must not need it (checked with a stand-in)."""
    weightless, calls = weightless_attention
    calls.clear()
    results = {}
    for implementation in ("eager", weightless):
        model, processor = build_tiny_llava(seed=3)
        model.model.vision_tower.config._attn_implementation = implementation
        flowcut(model, target_num=48)
        pixel_values = processor.image_processor(images=[synthetic_image(0), synthetic_image(5)], return_tensors="pt")["pixel_values"]
        with torch.no_grad():
            results[implementation] = model.model.get_image_features(pixel_values=pixel_values).keep_indices
    assert calls and calls[0] == 577 and calls[-1] == 49, "the weightless backend must have run every encoder layer"
    for eager_keep, weightless_keep in zip(results["eager"], results[weightless]):
        assert torch.equal(eager_keep, weightless_keep)


@pytest.mark.parametrize(
    "field, bad", [("flowcut_enabled", "false"), ("flowcut_enabled", 1), ("flowcut_prune_interval", 2.5),
                   ("flowcut_prune_interval", "2"), ("flowcut_prune_interval", 0), ("flowcut_history_weight", 1.0),
                   ("flowcut_history_weight", "0.5")],
)
def test_bad_method_settings_are_value_errors(field, bad):
    from flowcut_hf import FlowCutLlavaConfig

    with pytest.raises(ValueError, match=field):
        FlowCutLlavaConfig(**{field: bad})
    config = FlowCutLlavaConfig()
    with pytest.raises(ValueError, match=field):
        setattr(config, field, bad)
    model, _ = build_tiny_llava(seed=0)
    with pytest.raises(ValueError, match=field):
        flowcut(model, **{field.removeprefix("flowcut_"): bad})
    assert type(model) is LlavaForConditionalGeneration
