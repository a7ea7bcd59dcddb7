"""FlowCut on LLaVA-NeXT must reproduce the authors' own code end to end (cases in tests/reference/).

Fed with the stock HF input (the stock placeholder count), in float32 with eager CLIP attention and sdpa in the LLM,
the model must select the same tokens in every crop and in the LLM, lay the visual tokens out in the same order, and
give the same prefill logits and greedy tokens as the authors' batch-size-1 code.
"""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from test_reference import REFERENCE_DIR
from flowcut_hf.modeling.flowcut_compat import cache_of
from flowcut_hf.modeling.configuration_flowcut_llava_next import FlowCutLlavaNextConfig
from flowcut_hf.modeling.modeling_flowcut_llava_next import FlowCutLlavaNextForConditionalGeneration, stock_token_count

CASES_FILE = REFERENCE_DIR / "flowcut_next_cases.json"
INDEX = json.loads(CASES_FILE.read_text())
TENSORS = load_file(REFERENCE_DIR / "flowcut_next_cases.safetensors")
CASES = INDEX["cases"]


def case_tensors(name: str) -> dict[str, torch.Tensor]:
    return {k[len(name) + 1 :]: v for k, v in TENSORS.items() if k.startswith(name + ".")}


def build_reference_model(case: dict, **settings) -> FlowCutLlavaNextForConditionalGeneration:
    hf_config = INDEX["models"][case["model"]]["hf_config"]
    fields = {k: v for k, v in hf_config.items() if k not in ("model_type", "transformers_version")}
    config = FlowCutLlavaNextConfig(**fields, flowcut_target_num=case["target_num"], **settings)
    config.vision_config._attn_implementation = "eager"
    config.text_config._attn_implementation = "sdpa"
    model = FlowCutLlavaNextForConditionalGeneration(config).eval()
    prefix = f"{case['model']}.hf_weights."
    # Stored as float16 (exactly representable); the reference runs were float32.
    state = {k[len(prefix) :]: v.float() for k, v in TENSORS.items() if k.startswith(prefix)}
    missing, unexpected = model.load_state_dict(state, strict=False)
    assert not missing and not unexpected, (missing, unexpected)
    return model


def reference_inputs(tensors: dict[str, torch.Tensor]) -> dict[str, torch.Tensor]:
    lut, pixels = tensors["pixel_lut"], tensors["pixel_values_u8"].long()
    pixel_values = lut[torch.arange(3)[:, None, None], pixels][None]
    return {"input_ids": tensors["input_ids_hf"], "pixel_values": pixel_values, "image_sizes": tensors["image_sizes_hw"]}


@pytest.fixture(scope="module", params=[case["name"] for case in CASES])
def reference_run(request):
    case = next(c for c in CASES if c["name"] == request.param)
    tensors = case_tensors(case["name"])
    model = build_reference_model(case)
    inputs = reference_inputs(tensors)
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs)
    return case, tensors, model, inputs, features, output


def test_stock_placeholder_count_is_the_processors(reference_run):
    case, tensors, model, inputs, _, _ = reference_run
    count = stock_token_count(model.config, inputs["image_sizes"][0])
    assert count == case["unpruned_visual_tokens_hf"] == int((inputs["input_ids"] == 999).sum())


def test_vision_stage_keeps_the_authors_patches_in_every_crop(reference_run):
    case, tensors, _, _, features, _ = reference_run
    keep = features.keep_indices[0]
    assert keep.shape == (case["num_crops"], case["target_num"] // 2)
    assert torch.equal(keep, tensors["vision_keep_indices"])
    # The reference records the length after each layer; ours, the length each layer ran on. Layers after LLaVA's
    # feature layer (-2) never run here.
    schedule = features.token_schedule[0]
    assert schedule[1:] == case["vision_seq_len_after_each_layer"][: len(schedule) - 1]
    assert len(schedule) == 23


def test_visual_tokens_enter_the_llm_in_the_authors_order(reference_run):
    case, tensors, _, _, features, _ = reference_run
    assert len(features.pooler_output[0]) == case["visual_tokens_into_llm"]
    assert torch.equal(features.token_sources[0], tensors["llm_visual_source"])


def test_llm_stage_keeps_the_authors_tokens_and_shortens_the_sequence(reference_run):
    case, tensors, _, _, _, output = reference_run
    assert torch.equal(output.llm_keep_indices[0], tensors["llm_keep_indices"])
    assert output.logits.shape[1] == case["seq_len_after_llm_prune"]
    layers = cache_of(output).layers
    prune_layer = 1
    assert [layer.keys.shape[2] for layer in layers] == [case["prefill_len"]] * (prune_layer + 1) + [
        case["seq_len_after_llm_prune"]
    ] * (len(layers) - prune_layer - 1)


def test_prefill_logits_and_greedy_tokens_equal_the_authors(reference_run):
    _, tensors, model, inputs, _, output = reference_run
    torch.testing.assert_close(output.logits[0, -1], tensors["pruned_last_logits"], rtol=0, atol=1e-4)
    with torch.no_grad():
        for use_cache in (True, False):
            tokens = model.generate(
                **inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0, use_cache=use_cache
            )
            assert tokens[0, inputs["input_ids"].shape[1] :].tolist() == tensors["pruned_greedy"].tolist()


def test_pruning_off_reproduces_the_unpruned_reference():
    case = CASES[0]
    tensors = case_tensors(case["name"])
    model = build_reference_model(case, flowcut_enabled=False)
    inputs = reference_inputs(tensors)
    with torch.no_grad():
        logits = model(**inputs).logits[0, -1]
        tokens = model.generate(**inputs, max_new_tokens=8, do_sample=False, eos_token_id=None, pad_token_id=0)
    torch.testing.assert_close(logits, tensors["unpruned_last_logits"], rtol=0, atol=1e-4)
    assert tokens[0, inputs["input_ids"].shape[1] :].tolist() == tensors["unpruned_greedy"].tolist()


def test_a_target_the_authors_code_crashes_on_keeps_every_patch_and_prunes_in_the_llm():
    """target_num >= 1152 makes the authors' code index out of range; here the encoder keeps all 576 patches."""
    crash = INDEX["authors_code_crashes"][0]
    case = next(c for c in CASES if c["model"] == crash["model"] and c["image_size_wh"] == crash["image_size_wh"])
    model = build_reference_model({**case, "target_num": crash["target_num"]})
    inputs = reference_inputs(case_tensors(case["name"]))
    with torch.no_grad():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs)
    assert features.keep_indices[0].shape == (case["num_crops"], 576)
    visual_tokens = len(features.pooler_output[0])
    assert visual_tokens > crash["target_num"]
    assert len(output.llm_keep_indices[0]) == crash["target_num"]
    assert torch.isfinite(output.logits).all()
