"""``flowcut-hf bench --family llava-onevision``: stock vs VFlowOpt's presets, per-layer KV accounting and the KV
reduction the paper reports."""

from __future__ import annotations

import json

from flowcut_hf.families.llava_onevision.bench import format_onevision_table, run_onevision_bench
from flowcut_hf.cli import main
from flowcut_hf.families.llava_onevision.builtin import build_tiny_llava_onevision


def test_onevision_bench_reports_stage_lengths_kv_reduction_and_restores_the_model(tmp_path, capsys):
    model, processor = build_tiny_llava_onevision(seed=0)
    report = run_onevision_bench(model, processor, presets=["10%"], repeats=1, warmup=0, progress=False, spec="tiny")
    assert type(model).__name__ == "LlavaOnevisionForConditionalGeneration" and not hasattr(model.config, "pruning_method")
    stock, pruned, matched, oracle = report["configs"]
    assert report["settings"]["stock_image_tokens"] == 3699 and stock["visual_tokens_per_layer"] == [3699] * 28
    assert pruned["visual_tokens_per_layer"] == [439] * 18 + [264] * 10, "the spec's 10% counts, layer by layer"
    assert oracle["kind"] == "oracle" and oracle["visual_tokens_per_layer"] == [370] * 28, "10% of 3699 at every layer"
    assert pruned["over_oracle"] > 0 and oracle["over_oracle"] is None
    assert matched["name"] == "flowcut@370" and matched["visual_tokens_per_layer"][2:] == [370] * 26, "FlowCut, matched"
    assert matched["visual_tokens_per_layer"][0] == 5 * 185, "5 crops of 185 patches out of the vision tower"
    for row in report["configs"]:
        assert row["kv_cache"]["match"], row["name"]
    # Text tokens are cached in full, so the saving is a little below the visual-token share.
    assert abs(pruned["kv_cache"]["reduction_vs_stock"] - 0.89) < 0.01 and report["targets"]["kv_reduction_at_10%"]["met"]
    assert pruned["llm_flops"] < stock["llm_flops"] / 10
    assert "vflowopt@10%" in format_onevision_table(report) and "oracle@10%" in format_onevision_table(report)

    out = tmp_path / "bench.json"
    assert main(["bench", "tiny", "--family", "llava-onevision", "--repeats", "1", "--warmup", "0", "--no-progress",
                 "--threads", "1", "--json", str(out)]) == 0
    assert json.loads(out.read_text())["family"] == "llava_onevision"
    assert "VFlowOpt@10% KV cache saved" in capsys.readouterr().out
