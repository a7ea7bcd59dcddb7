"""The README's first command, ``flowcut-hf demo``: the main job (export, load back in a fresh process, generate,
time) on a built-in model, then FlowCut in process on LLaVA-NeXT and Qwen2.5-VL."""

from __future__ import annotations

import json

from flowcut_hf.cli import main
from flowcut_hf.benchmark import speed_words
from flowcut_hf.families.llava_next.demo import run_next_demo
from flowcut_hf.families.qwen2_vl.demo import run_qwen_demo


def test_the_demo_exports_a_variant_that_loads_back_alone_and_prunes(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--family", "llava", "--out", str(out), "--target-num", "48", "--repeats", "1",
                 "--max-new-tokens", "2"]) == 0
    printed = capsys.readouterr().out
    variant = out / "tiny-llava-flowcut48"
    # A complete variant folder: the base's weights, the FlowCut config fields, the remote code, the processor that
    # emits the kept count, a card.
    config = json.loads((variant / "config.json").read_text())
    assert config["flowcut_target_num"] == 48 and "AutoModelForImageTextToText" in config["auto_map"]
    assert (variant / "model.safetensors").read_bytes() == (out / "tiny-llava" / "model.safetensors").read_bytes()
    assert (variant / "modeling_flowcut_llava.py").is_file() and (variant / "README.md").is_file()
    assert json.loads((variant / "processor_config.json").read_text())["flowcut_target_num"] == 48
    # What the fresh process (transformers alone) did with it, as printed.
    assert f"variant: {variant}" in printed and "loaded as FlowCutLlavaForConditionalGeneration" in printed
    assert printed.count("kept 48 of 576 visual tokens") == 2
    assert "LLM prompt length: 1216 tokens unpruned -> 160" in printed
    assert "prefill median over 1 runs against the base" in printed and "-> ratio " in printed

    # A re-run replaces the folder it made; a folder it did not make is refused, untouched.
    assert main(["demo", "--family", "llava", "--out", str(out), "--target-num", "32", "--repeats", "1",
                 "--max-new-tokens", "1"]) == 0
    assert not variant.exists() and (out / "tiny-llava-flowcut32").is_dir()
    mine = tmp_path / "mine"
    mine.mkdir()
    (mine / "notes.txt").write_text("keep")
    assert main(["demo", "--family", "llava", "--out", str(mine)]) == 2
    assert "was not made by flowcut-hf demo" in capsys.readouterr().err and (mine / "notes.txt").read_text() == "keep"


def test_the_ratio_says_slower_when_it_is():
    assert speed_words(2.0, 1.0) == "ratio 0.50 (2.00x faster)"
    assert speed_words(1.0, 1.35) == "ratio 1.35 (1.35x slower)"


def test_next_demo_prunes_in_the_vision_encoder_then_in_the_llm():
    figures = run_next_demo(target_num=40, repeats=1, max_new_tokens=2)
    assert figures["tokens_after_llm_stage_per_image"] == [40, 40]
    assert all(40 < into < stock for into, stock in zip(figures["tokens_into_llm_per_image"], figures["stock_tokens_per_image"]))
    lengths = figures["kv_cache_lengths"]
    assert lengths[0] == lengths[1] > lengths[2] == lengths[3], "layers after the LLM stage cache fewer tokens"


def test_qwen_demo_keeps_whole_units_in_the_vit_then_the_ratio_in_the_llm():
    figures = run_qwen_demo(repeats=1, max_new_tokens=2)
    assert figures["stock_tokens_per_image"] == [56, 48]
    assert figures["tokens_into_llm_per_image"] == [28, 24] and figures["tokens_after_llm_stage_per_image"] == [14, 12]
    lengths = figures["kv_cache_lengths"]
    assert lengths[0] - lengths[2] == (28 - 14) + (24 - 12), "layers after the LLM stage cache fewer tokens"


def test_demo_command_runs_one_family(capsys):
    assert main(["demo", "--family", "llava-next", "--target-num", "32", "--repeats", "1", "--max-new-tokens", "1"]) == 0
    printed = capsys.readouterr().out
    assert "LLaVA-NeXT" in printed and "after LLM layer 1" in printed and "LLaVA-1.5" not in printed
