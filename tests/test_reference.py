"""FlowCut's selections must equal those of the authors' own code (cases in tests/reference/, see its README)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from transformers import CLIPVisionConfig, CLIPVisionModel

from flowcut_hf.modeling.flowcut_clip import encode_clip_with_flowcut, feature_layer_index
from flowcut_hf.modeling.flowcut_settings import FlowCutSettings

# The cases travel with the repository, so a fresh clone runs every test with nothing beside it.
REFERENCE_DIR = Path(__file__).resolve().parent / "reference"


def load_cases():
    index = json.loads((REFERENCE_DIR / "flowcut_vision_cases.json").read_text())
    tensors = load_file(REFERENCE_DIR / "flowcut_vision_cases.safetensors")
    return [(case, {k[len(case["name"]) + 1 :]: v for k, v in tensors.items() if k.startswith(case["name"] + ".")}) for case in index["cases"]]


def build_encoder(case, tensors, attn_implementation):
    config = CLIPVisionConfig(**case["vision_config"])
    config._attn_implementation = attn_implementation
    encoder = CLIPVisionModel(config).eval()
    prefix = "weights.vision_model."
    state = {k[len(prefix) :]: v for k, v in tensors.items() if k.startswith(prefix)}
    missing, unexpected = encoder.load_state_dict(state, strict=False)
    # position_ids is a non-persistent buffer; every parameter must come from the reference.
    assert not [k for k in missing if "position_ids" not in k] and not unexpected, (missing, unexpected)
    return encoder


def assert_float32_close(actual, expected):
    # 23 layers of float32 matmuls in another summation order (transformers 5 vs 4.37) leave ~1e-6 relative noise
    # on features of magnitude ~100; a wrong token or a wrong layer would be off by O(1).
    scale = expected.abs().max().item()
    torch.testing.assert_close(actual, expected, rtol=1e-4, atol=1e-5 * scale)
    assert (actual - expected).norm() / expected.norm() < 1e-5


def run_flowcut(encoder, case, tensors):
    settings = FlowCutSettings(enabled=True, target_num=case["target_num"], prune_interval=2, history_weight=0.5)
    feature_layer = feature_layer_index(-2, encoder.config.num_hidden_layers)
    with torch.no_grad():
        hidden, keep, schedule = encode_clip_with_flowcut(
            encoder, tensors["pixel_values"], feature_layer, case["target_num"] + 1, settings
        )
    return hidden[:, 1:], keep, schedule


CASES = load_cases()


@pytest.mark.parametrize("index", range(len(CASES)))
def test_eager_float32_reproduces_authors_selection(index):
    case, tensors = CASES[index]
    encoder = build_encoder(case, tensors, "eager")
    with torch.no_grad():
        unpruned = encoder(tensors["pixel_values"], output_hidden_states=True).hidden_states[-2][:, 1:]
    # The weights are the reference's: the unpruned features must agree before pruning is even considered.
    assert_float32_close(unpruned, tensors["unpruned_features"])

    features, keep, schedule = run_flowcut(encoder, case, tensors)
    assert torch.equal(keep, tensors["keep_indices"].to(keep.dtype))
    assert_float32_close(features, tensors["pruned_features"])
    assert schedule[-1] == case["target_num"] + 1
    assert len(schedule) == 23, "layers after LLaVA's feature layer must not run"


@pytest.mark.parametrize("index", range(len(CASES)))
def test_sdpa_matches_reference(index, record_property):
    case, tensors = CASES[index]
    encoder = build_encoder(case, tensors, "sdpa")
    features, keep, _ = run_flowcut(encoder, case, tensors)
    expected = tensors["keep_indices"].to(keep.dtype)
    differing = int((keep != expected).sum())
    record_property("sdpa_differing_keep_indices", differing)
    print(f"{case['name']}: sdpa differs from the reference in {differing} of {keep.numel()} kept indices")
    assert differing == 0, f"sdpa selected {differing} different tokens than the authors' eager code"
    assert_float32_close(features, tensors["pruned_features"])
