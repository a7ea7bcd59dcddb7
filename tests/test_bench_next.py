"""``flowcut-hf bench --family llava-next``: stock vs FlowCut vs oracle on LLaVA-NeXT, with per-layer KV accounting."""

from __future__ import annotations

import json

from flowcut_hf.families.llava_next.bench import format_next_table, run_next_bench
from flowcut_hf.cli import main
from flowcut_hf.families.llava_next.builtin import build_tiny_llava_next


def test_next_bench_report_counts_every_layers_own_kv_length_and_restores_the_model():
    model, processor = build_tiny_llava_next(seed=0)
    report = run_next_bench(model, processor, target_nums=[32], repeats=1, warmup=0, progress=False, spec="tiny")
    assert type(model).__name__ == "LlavaNextForConditionalGeneration", "the bench must give back a stock model"
    assert not hasattr(model.config, "flowcut_target_num")

    rows = {c["name"]: c for c in report["configs"]}
    assert list(rows) == ["stock", "flowcut@32", "oracle@32"]
    stock, pruned, oracle = rows["stock"], rows["flowcut@32"], rows["oracle@32"]
    assert report["settings"]["stock_image_tokens"] == stock["tokens_into_llm"] == 2928  # a 672x672 image
    assert report["settings"]["crops"] == 5 and pruned["kept_per_crop"] == [5, 16]
    assert pruned["tokens_after_llm_stage"] == 32 and oracle["tokens_into_llm"] == oracle["tokens_after_llm_stage"] == 32
    lengths = pruned["llm_layer_seq_lens"]
    assert lengths[0] == lengths[1] > lengths[2] == lengths[3], "layers after the LLM stage cache fewer tokens"
    for row in report["configs"]:
        kv = row["kv_cache"]
        assert kv["match"] and kv["measured_bytes"] == kv["analytic_bytes"] and kv["measured_layer_lengths"] == row["llm_layer_seq_lens"]
    # The oracle runs the full encoder; FlowCut's is pruned.
    assert oracle["analytic"]["vision_flops"] == stock["analytic"]["vision_flops"] > pruned["analytic"]["vision_flops"]
    assert pruned["flowcut_over_oracle"] is not None and pruned["speedup_vs_stock"] > 0
    table = format_next_table(report)
    assert "flowcut@32" in table and "80->32" in table and "equal to the analytic count" in table


def test_bench_command_runs_the_next_preset_family_and_writes_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "tiny", "--family", "llava-next", "--target-num", "40", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--no-progress", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["family"] == "llava_next" and [c["name"] for c in report["configs"]] == ["stock", "flowcut@40", "oracle@40"]
    assert "FlowCut@160 speed-up vs stock" in capsys.readouterr().out


def test_a_model_that_is_neither_a_folder_nor_a_repo_id_is_a_clear_error(tmp_path, capsys):
    missing = str(tmp_path / "no" / "such" / "model")
    assert main(["visualize", missing, "--out", str(tmp_path / "kept.png")]) == 2
    assert main(["bench", missing, "--repeats", "1", "--no-progress"]) == 2
    assert capsys.readouterr().err.count("neither an existing folder nor a Hub repo id") == 2
