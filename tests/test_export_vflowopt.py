"""Exporting VFlowOpt variants of LLaVA-OneVision: a released preset, or a preset found by ``flowcut-hf search``, is
written, verified against its own stage rule and the library's model, and carded with how it was found."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from huggingface_hub import ModelCard

from flowcut_hf.export.pipeline import ExportOptions, export
from flowcut_hf.registry import family_named
from flowcut_hf.families.llava_onevision.builtin import build_tiny_llava_onevision
from test_export import refusal

BASE_ID = "llava-hf/llava-onevision-qwen2-7b-ov-hf"


@pytest.fixture(scope="module")
def onevision_base(tmp_path_factory) -> Path:
    """A tiny llava-hf-format LLaVA-OneVision checkpoint; the processor's pieces are saved one by one (its video
    processor needs torchvision)."""
    folder = tmp_path_factory.mktemp("onevision_base") / "llava-onevision-tiny-hf"
    model, processor = build_tiny_llava_onevision(seed=5)
    model.save_pretrained(folder)
    processor.tokenizer.save_pretrained(folder)
    processor.image_processor.save_pretrained(folder)
    (folder / "processor_config.json").write_text(json.dumps({
        "processor_class": "LlavaOnevisionProcessor", "num_image_tokens": 729, "vision_feature_select_strategy": "full",
    }) + "\n")
    (folder / "README.md").write_text("---\nlicense: apache-2.0\n---\n# tiny OneVision base\n")
    return folder


def test_released_and_searched_presets_export_verify_and_card(onevision_base, tmp_path):
    searched = tmp_path / "budget25.json"
    settings = {"vflowopt_vision_keep": 0.3, "vflowopt_threshold": 20.0, "vflowopt_cell_side": 10.0,
                "vflowopt_entropy_weight": 0.2, "vflowopt_llm_layers": [9, 18], "vflowopt_llm_keeps": [0.9, 0.7]}
    search = {"budget": 0.25, "trials": 40, "data": "calib", "samples": 3, "objective": "sum of cos", "best_value": 2.9,
              "first_value": 2.5, "sampler": "optuna TPESampler", "seed": 0}
    searched.write_text(json.dumps({"method": "vflowopt", "settings": settings, "search": search}))
    options = ExportOptions(target_nums=[], vflowopt_presets=["10%", str(searched)], out=tmp_path / "out", base_model=BASE_ID)
    results = {r.plan.name: r for r in export(onevision_base, options, log=lambda _: None)}
    assert sorted(results) == ["llava-onevision-tiny-hf-vflowopt10", "llava-onevision-tiny-hf-vflowoptbudget25"]
    folder = results["llava-onevision-tiny-hf-vflowopt10"].plan.folder
    assert {p.name for p in folder.glob("*.py")} == {p.name for p in family_named("llava_onevision").remote_code_files()}
    config = json.loads((folder / "config.json").read_text())
    assert config["pruning_method"] == "vflowopt" and config["model_type"] == "llava_onevision"
    assert config["auto_map"]["AutoModelForImageTextToText"].endswith("FlowCutLlavaOnevisionForConditionalGeneration")
    verification = results["llava-onevision-tiny-hf-vflowopt10"].verification
    lengths = verification["layer_lengths"]
    assert lengths[0] == lengths[8] > lengths[18] == lengths[27], "the verified variant cached fewer tokens late"

    card = ModelCard.load(results["llava-onevision-tiny-hf-vflowoptbudget25"].plan.folder / "README.md")
    assert card.data.base_model == BASE_ID and "llava_onevision" in card.data.tags
    assert card.data.flowcut["vflowopt_threshold"] == 20.0 and card.data.flowcut["pruning_method"] == "vflowopt"
    assert "VFlowOpt" in card.text and "a search of 40 trials on 3 calibration samples" in card.text
    assert "**25.0%**" in card.text and "run unchanged" in card.text


def test_vflowopt_export_refusals_name_the_fix(onevision_base, tmp_path, capsys):
    base = ["export", str(onevision_base), "--out", str(tmp_path / "o"), "--base-model", BASE_ID]
    code, error = refusal(capsys, *base, "--method", "vflowopt")
    assert code == 2 and "needs --preset" in error
    code, error = refusal(capsys, *base, "--method", "vflowopt", "--preset", "5%")
    assert code == 2 and "released preset" in error
    assert not (tmp_path / "o").exists()


def test_llava_and_next_variants_take_the_stock_processor_and_a_preset_moved_to_their_depth(tmp_path):
    from flowcut_hf.families.llava.builtin import build_tiny_llava
    from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next

    searched = tmp_path / "next-budget20.json"
    settings = {"vflowopt_vision_keep": 0.3, "vflowopt_threshold": 5.0, "vflowopt_cell_side": 6.0,
                "vflowopt_entropy_weight": 0.1, "vflowopt_llm_layers": [1, 3], "vflowopt_llm_keeps": [0.8, 0.5]}
    searched.write_text(json.dumps({"method": "vflowopt", "settings": settings, "search": {"budget": 0.2}}))
    for name, builder, preset, family in (
        ("llava-tiny-hf", lambda: build_tiny_llava(seed=5, num_text_layers=4), "10%", "llava"),
        ("llava-next-tiny-hf", lambda: build_tiny_llava_next(seed=5), str(searched), "llava_next"),
    ):
        base = tmp_path / name
        model, processor = builder()
        model.save_pretrained(base)
        processor.save_pretrained(base)
        options = ExportOptions(target_nums=[], vflowopt_presets=[preset], out=tmp_path / "out", base_model="org/base")
        (result,) = export(base, options, log=lambda _: None)
        folder = result.plan.folder
        config = json.loads((folder / "config.json").read_text())
        assert config["pruning_method"] == "vflowopt" and config["vflowopt_llm_layers"] == [1, 3]
        stock_processor = family_named(family).stock_processor_class.__name__
        assert json.loads((folder / "processor_config.json").read_text())["processor_class"] == stock_processor
        lengths = result.verification["layer_lengths"]
        assert lengths[0] >= lengths[1] == lengths[2] > lengths[3], "verified: each LLM stage caches no more than the one before"
        card = ModelCard.load(folder / "README.md").text
        if preset == "10%":
            assert "moved to this model's 4 with the same budget" in card and "**10.0%**" in card
        else:
            assert "**20.0%**" in card
