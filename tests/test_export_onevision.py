"""FlowCut on LLaVA-OneVision is exported like every other family: its adapter declares its check (the crops' kept
patches out of SigLIP, the target after the LLM stage) and its FLOPs; nothing in the exporter is written for it."""

from __future__ import annotations

import json

import torch
from huggingface_hub import ModelCard

from conftest import load_saved_folder
from flowcut_hf.export.pipeline import ExportOptions, export
from flowcut_hf.families.llava_onevision.builtin import build_tiny_llava_onevision
from flowcut_hf.tiny import synthetic_image
from test_export_vflowopt import BASE_ID, onevision_base  # noqa: F401  (the module's fixture)

TARGET = 64


def test_flowcut_onevision_variant_is_verified_carded_and_loads_alone(onevision_base, tmp_path):  # noqa: F811
    (result,) = export(onevision_base, ExportOptions(target_nums=[TARGET], out=tmp_path / "out", base_model=BASE_ID),
                       log=lambda _: None)
    folder = result.plan.folder
    assert folder.name == "llava-onevision-tiny-hf-flowcut64"
    config = json.loads((folder / "config.json").read_text())
    assert config["pruning_method"] == "flowcut" and config["flowcut_target_num"] == TARGET
    assert config["model_type"] == "llava_onevision" and "AutoModelForImageTextToText" in config["auto_map"]
    assert (folder / "model.safetensors").read_bytes() == (onevision_base / "model.safetensors").read_bytes()
    assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == "LlavaOnevisionProcessor"

    # What the check measured on its 600x800 image, as the adapter declares it: half the target per crop out of
    # SigLIP, the target after the LLM stage; layers 0-1 cache more than the later ones.
    verification = result.verification
    crops, kept = verification["kept_per_crop"][0]
    assert crops > 1 and kept == TARGET // 2 and verification["llm_kept"] == [TARGET]
    lengths = verification["layer_lengths"]
    assert lengths[0] == lengths[1] > lengths[2] == lengths[-1] == verification["text_tokens"] + TARGET

    card = ModelCard.load(folder / "README.md")
    assert card.data.flowcut["pruning_method"] == "flowcut" and card.data.flowcut["flowcut_target_num"] == TARGET
    assert "FlowCut" in card.text and "measured on a synthetic image during export" in card.text

    # The folder runs as remote code in a clean process (flowcut_hf blocked) and prunes.
    model, processor = build_tiny_llava_onevision(seed=5)
    image = synthetic_image(3, size=(500, 700))
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": "What is it?"}]}], add_generation_prompt=True
    )
    inputs = processor(text=[prompt], images=[image], return_tensors="pt")
    loaded, logits = load_saved_folder(folder, inputs, trust=True, tmp_path=tmp_path)
    assert loaded["class"] == "FlowCutLlavaOnevisionForConditionalGeneration" and loaded["keys_ok"]
    assert loaded["method"] == "flowcut" and loaded["length"] < inputs["input_ids"].shape[1], "the sequence got shorter"
    assert torch.isfinite(logits).all()
