"""Tests for ``flowcut-hf bench``: the report's schema and the relations between its figures, on the tiny model.

Nothing here asserts a wall-clock time: timings on a shared CPU are noise at this size. What is checked is that every
figure is there, has the right type, and agrees with the analytic accounting and with the model's own report.
"""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import LlavaConfig, LlavaForConditionalGeneration, LlavaModel

from flowcut_hf import accounting, bench, benchmark, cli, flowcut
from flowcut_hf.families.llava.builtin import build_tiny_llava

TARGET = 64
REPEATS = 2

TOP_KEYS = {"schema_version", "tool", "versions", "model", "device", "dtype", "settings", "configs", "targets"}
CONFIG_KEYS = {
    "name", "kind", "target_num", "passthrough", "num_image_tokens", "llm_seq_len", "prefill_ms",
    "speedup_vs_stock", "paired_speedup_vs_stock", "flowcut_over_oracle", "paired_flowcut_over_oracle",
    "token_schedule", "reported_token_schedule", "kept_per_image", "analytic", "flops_ratio_vs_stock", "kv_cache",
    "peak_memory", "scoring",
}
STATS_KEYS = {"median", "mean", "stdev", "min", "max", "q1", "q3", "iqr", "samples"}
SETTINGS_KEYS = {
    "repeats", "warmup", "batch_size", "prompt", "image", "num_text_tokens", "full_image_tokens", "target_nums",
    "passthrough", "order", "oracle_selection", "timer", "memory_method",
}
ANALYTIC_KEYS = {
    "vision_flops", "projector_flops", "llm_flops", "total_flops", "kv_cache_bytes", "batch_size", "num_images",
    "token_schedule", "num_image_tokens", "llm_seq_len", "kv_dtype",
}
SCORING_KEYS = {
    "median_ms", "samples_ms", "signals_ms", "selection_ms", "calls_per_prefill", "fraction_of_prefill",
    "instrumented_prefill_ms",
}


@pytest.fixture(scope="module")
def tiny_model():
    return build_tiny_llava(seed=0)


@pytest.fixture(scope="module")
def report(tiny_model):
    model, processor = tiny_model
    result = bench.run_bench(
        model, processor, target_nums=[TARGET], repeats=REPEATS, warmup=0, scoring_runs=1, progress=False, spec="tiny"
    )
    # The document must survive a JSON round trip unchanged (no tensors, no NaN-only fields by accident).
    return json.loads(json.dumps(result))


def configs_by_name(report):
    return {c["name"]: c for c in report["configs"]}


def test_schema_keys(report):
    assert TOP_KEYS <= report.keys()
    assert report["schema_version"] == benchmark.SCHEMA_VERSION
    assert report["tool"] == "flowcut-hf bench"
    assert SETTINGS_KEYS <= report["settings"].keys()
    assert report["device"]["type"] == "cpu"
    assert report["dtype"] == "float32"
    assert report["model"]["vision"]["layers"] == 24
    by_name = configs_by_name(report)
    assert list(by_name) == ["stock", f"flowcut@{TARGET}", f"oracle@{TARGET}", "flowcut@576"]
    for config in report["configs"]:
        assert CONFIG_KEYS <= config.keys(), config["name"]
        assert STATS_KEYS <= config["prefill_ms"].keys()
        assert ANALYTIC_KEYS <= config["analytic"].keys()
        assert {"measured_bytes", "analytic_bytes", "match", "cached_tokens"} <= config["kv_cache"].keys()
        assert {"method", "bytes", "baseline_bytes"} <= config["peak_memory"].keys()
    assert SCORING_KEYS <= by_name[f"flowcut@{TARGET}"]["scoring"].keys()
    for name in ("stock", f"oracle@{TARGET}", "flowcut@576"):
        assert by_name[name]["scoring"] is None
    assert set(report["targets"]) == {"flowcut_over_oracle_at_64", "passthrough_overhead", "scoring_fraction_at_64"}
    for entry in report["targets"].values():
        assert {"value", "limit", "met"} <= entry.keys()
        assert isinstance(entry["met"], bool)


def test_timing_statistics_are_consistent(report):
    by_name = configs_by_name(report)
    for config in report["configs"]:
        stats = config["prefill_ms"]
        assert len(stats["samples"]) == REPEATS
        assert all(s > 0 for s in stats["samples"])
        assert stats["min"] <= stats["q1"] <= stats["median"] <= stats["q3"] <= stats["max"]
        assert stats["iqr"] == pytest.approx(stats["q3"] - stats["q1"])
        assert config["speedup_vs_stock"] == pytest.approx(by_name["stock"]["prefill_ms"]["median"] / stats["median"])
    assert by_name["stock"]["speedup_vs_stock"] == pytest.approx(1.0)
    flowcut_row, oracle_row = by_name[f"flowcut@{TARGET}"], by_name[f"oracle@{TARGET}"]
    assert flowcut_row["flowcut_over_oracle"] == pytest.approx(
        flowcut_row["prefill_ms"]["median"] / oracle_row["prefill_ms"]["median"]
    )
    assert oracle_row["flowcut_over_oracle"] is None
    targets = report["targets"]
    assert targets["flowcut_over_oracle_at_64"]["value"] == flowcut_row["flowcut_over_oracle"]
    assert targets["passthrough_overhead"]["value"] == pytest.approx(
        by_name["flowcut@576"]["prefill_ms"]["median"] / by_name["stock"]["prefill_ms"]["median"] - 1
    )
    scoring = flowcut_row["scoring"]
    assert scoring["median_ms"] > 0
    assert scoring["median_ms"] == pytest.approx(scoring["signals_ms"] + scoring["selection_ms"])  # one run
    assert scoring["fraction_of_prefill"] == pytest.approx(scoring["median_ms"] / flowcut_row["prefill_ms"]["median"])
    assert targets["scoring_fraction_at_64"]["value"] == scoring["fraction_of_prefill"]


def test_schedules_and_kept_tokens(report):
    by_name = configs_by_name(report)
    assert by_name["stock"]["token_schedule"] == [577] * 24  # stock LLaVA runs every CLIP layer
    assert by_name[f"oracle@{TARGET}"]["token_schedule"] == [577] * 24
    assert by_name["flowcut@576"]["token_schedule"] == [577] * 24
    schedule = by_name[f"flowcut@{TARGET}"]["token_schedule"]
    assert len(schedule) == 23  # FlowCut stops at the feature layer (-2)
    assert schedule[0] == 577 and schedule[-1] == TARGET + 1
    assert all(a >= b for a, b in zip(schedule, schedule[1:]))
    assert by_name[f"flowcut@{TARGET}"]["reported_token_schedule"] == schedule
    assert by_name[f"flowcut@{TARGET}"]["kept_per_image"] == [TARGET]
    assert by_name["flowcut@576"]["kept_per_image"] == [576]
    calls = by_name[f"flowcut@{TARGET}"]["scoring"]["calls_per_prefill"]
    # Signals are computed for every layer that runs while the sequence is still longer than the target.
    assert calls["compute_layer_signals"] == calls["after_layer"] == sum(n > TARGET + 1 for n in schedule)


def test_flops_and_kv_match_accounting(report, tiny_model):
    model, _ = tiny_model
    by_name = configs_by_name(report)
    text_tokens = report["settings"]["num_text_tokens"]
    for config in report["configs"]:
        expected = accounting.prefill_account(
            model.config,
            text_tokens,
            token_schedule=config["token_schedule"],
            num_image_tokens=config["num_image_tokens"],
            kv_dtype=torch.float32,
        ).as_dict()
        assert config["analytic"] == expected, config["name"]
        assert config["analytic"]["vision_flops"] == accounting.vision_encoder_flops(
            model.config, config["token_schedule"]
        )
        assert config["llm_seq_len"] == text_tokens + config["num_image_tokens"]
        kv = config["kv_cache"]
        assert kv["match"] and kv["measured_bytes"] == kv["analytic_bytes"]
        assert kv["measured_bytes"] == accounting.kv_cache_bytes(model.config, config["llm_seq_len"], 1, "float32")
        assert kv["cached_tokens"] == config["llm_seq_len"]
        assert config["peak_memory"]["bytes"] >= 0
    stock, pruned, oracle = by_name["stock"], by_name[f"flowcut@{TARGET}"], by_name[f"oracle@{TARGET}"]
    assert pruned["kv_cache"]["measured_bytes"] < stock["kv_cache"]["measured_bytes"]
    assert pruned["kv_cache"]["measured_bytes"] == oracle["kv_cache"]["measured_bytes"]
    assert pruned["analytic"]["vision_flops"] < oracle["analytic"]["vision_flops"] == stock["analytic"]["vision_flops"]
    assert pruned["analytic"]["llm_flops"] == oracle["analytic"]["llm_flops"] < stock["analytic"]["llm_flops"]
    assert by_name["flowcut@576"]["analytic"] == stock["analytic"]
    assert pruned["flops_ratio_vs_stock"]["kv_cache_bytes"] == pytest.approx(
        pruned["kv_cache"]["analytic_bytes"] / stock["kv_cache"]["analytic_bytes"]
    )


def test_model_is_restored(tiny_model, report):
    model, _ = tiny_model
    assert type(model) is LlavaForConditionalGeneration
    assert type(model.model) is LlavaModel
    assert type(model.config) is LlavaConfig
    assert not any(name.startswith("flowcut_") for name in vars(model.config))


def test_flowcut_model_keeps_its_settings_and_table_renders():
    model, processor = build_tiny_llava(seed=1)
    flowcut(model, target_num=32)
    model_class = type(model)
    report = bench.run_bench(
        model, processor, target_nums=[16], repeats=1, warmup=0, passthrough=False, scoring_runs=1, progress=False
    )
    assert type(model) is model_class and model.config.flowcut_target_num == 32
    assert [c["name"] for c in report["configs"]] == ["stock", "flowcut@16", "oracle@16"]
    assert report["targets"]["passthrough_overhead"]["met"] is None
    assert report["targets"]["flowcut_over_oracle_at_64"]["value"] is None
    table = bench.format_table(report)
    for name in ("stock", "flowcut@16", "oracle@16", "targets", "n/a"):
        assert name in table


def test_cli_writes_json_for_a_model_folder(tmp_path, capsys):
    model, processor = build_tiny_llava(seed=0)
    folder = tmp_path / "stock_llava"
    model.save_pretrained(folder)
    processor.save_pretrained(folder)
    out = tmp_path / "bench.json"
    argv = [
        "bench", str(folder), "--target-num", "64", "--target-num", "600", "--repeats", "1", "--warmup", "0",
        "--scoring-runs", "1", "--json", str(out), "--no-progress",
    ]
    assert cli.main(argv) == 0
    document = json.loads(out.read_text())
    assert TOP_KEYS <= document.keys()
    assert document["model"]["spec"] == str(folder)
    names = [c["name"] for c in document["configs"]]
    assert names == ["stock", "flowcut@64", "oracle@64", "flowcut@600"]  # 600 >= 576: the passthrough row
    assert document["configs"][-1]["passthrough"] and document["configs"][-1]["num_image_tokens"] == 576
    printed = capsys.readouterr().out
    assert "flowcut@64" in printed and "targets (measured, not asserted)" in printed


def test_cli_rejects_bad_arguments(capsys):
    with pytest.raises(SystemExit) as refused:  # argparse's usage error
        cli.main(["bench", "tiny", "--target-num", "0", "--no-progress"])
    assert refused.value.code == 2
    error = capsys.readouterr().err
    assert "argument --target-num: must be a whole number of visual tokens" in error and "flowcut_enabled" not in error


def test_helpers():
    index = benchmark.uniform_indices(576, 64)
    assert index.tolist() == sorted(set(index.tolist())) and len(index) == 64
    assert index[0] == 0 and index[-1] == 575
    assert benchmark.uniform_indices(5, 5).tolist() == [0, 1, 2, 3, 4]
    assert benchmark.compact_schedule([577, 577, 500, 65]) == "577x2 500 65"
    stats = benchmark.stats_ms([0.001, 0.003, 0.002])
    assert stats["median"] == pytest.approx(2.0) and stats["min"] == pytest.approx(1.0)
    assert not math.isnan(stats["iqr"])
