"""The README's first command, ``flowcut-hf demo``, must run and report what the two families keep."""

from __future__ import annotations

from flowcut_hf.cli import main
from flowcut_hf.demo import run_demo, run_next_demo, run_qwen_demo


def test_llava_demo_keeps_the_target_per_image_and_shortens_the_prompt():
    figures = run_demo(target_num=48, repeats=1, max_new_tokens=2)
    assert figures["kept_tokens_per_image"] == [48, 48]
    assert figures["token_schedule"][0] == 577 and figures["token_schedule"][-1] == 49


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
    assert main(["demo", "--family", "llava_next", "--target-num", "32", "--repeats", "1", "--max-new-tokens", "1"]) == 0
    printed = capsys.readouterr().out
    assert "LLaVA-NeXT" in printed and "after LLM layer 1" in printed and "LLaVA-1.5" not in printed
