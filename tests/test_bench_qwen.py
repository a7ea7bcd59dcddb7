"""``flowcut-hf bench --family qwen2-vl`` and ``visualize`` on Qwen: stock vs FlowCut vs oracle, per-layer KV
accounting, and the picture of the kept 2x2 units."""

from __future__ import annotations

import json

import numpy as np
from PIL import Image

from flowcut_hf.families.qwen2_vl import accounting
from flowcut_hf.families.qwen2_vl.bench import format_qwen_table, run_qwen_bench
from flowcut_hf.cli import main
from flowcut_hf.families.qwen2_vl.builtin import build_tiny_qwen_vl
from flowcut_hf.tiny import synthetic_image
from flowcut_hf.families.qwen2_vl.visualize import kept_tokens_qwen, render_kept_tokens_qwen

IMAGE_SIZE = (448, 392)  # (height, width): 56 merge units at the tiny pixel budget


def test_qwen_bench_report_counts_every_layers_own_kv_length_and_restores_the_model():
    model, processor = build_tiny_qwen_vl("2", seed=0)
    report = run_qwen_bench(model, processor, retain_ratios=[0.25], repeats=1, warmup=0, image_size=IMAGE_SIZE,
                            progress=False, spec="tiny")
    assert type(model).__name__ == "Qwen2VLForConditionalGeneration", "the bench must give back a stock model"
    assert not hasattr(model.config, "flowcut_retain_ratio")

    rows = {c["name"]: c for c in report["configs"]}
    assert list(rows) == ["stock", "flowcut@0.25", "oracle@0.25"]
    stock, pruned, oracle = rows["stock"], rows["flowcut@0.25"], rows["oracle@0.25"]
    assert report["settings"]["stock_image_tokens"] == stock["tokens_into_llm"] == 56
    assert pruned["tokens_into_llm"] == 28 and pruned["tokens_after_llm_stage"] == 14
    assert oracle["tokens_into_llm"] == oracle["tokens_after_llm_stage"] == 14
    lengths = pruned["llm_layer_seq_lens"]
    assert lengths[0] == lengths[1] and lengths[0] - lengths[2] == 14 and lengths[2] == lengths[3]
    assert stock["llm_layer_seq_lens"][0] - lengths[0] == 28, "the vision stage halves the units into the LLM"
    for row in report["configs"]:
        kv = row["kv_cache"]
        assert kv["match"] and kv["measured_layer_lengths"] == row["llm_layer_seq_lens"]
    assert stock["vit_schedule"] == oracle["vit_schedule"] == [224] * 32
    assert pruned["vit_schedule"][0] == 224 and all(n % 4 == 0 for n in pruned["vit_schedule"])
    assert oracle["analytic"]["vision_flops"] == stock["analytic"]["vision_flops"], "the oracle runs the full ViT"
    assert pruned["analytic"]["vision_flops"] < stock["analytic"]["vision_flops"]
    assert pruned["flowcut_over_oracle"] is not None and report["targets"]["kv_cache_matches_analytic"]["met"]
    table = format_qwen_table(report)
    assert "flowcut@0.25" in table and "28->14" in table and "equal to the analytic count" in table


def test_qwen_vision_flops_follow_the_schedule():
    model, _ = build_tiny_qwen_vl("2", seed=0)
    vision = model.config.vision_config
    d, mlp = 32, 64
    one_block = accounting.qwen_vision_flops(vision, [8], 2)
    expected = 2 * 8 * 1176 * d + (2 * 8 * d * 4 * d + 4 * 8 * 8 * d + 2 * 8 * d * mlp * 2) + 2 * 2 * (4 * d) ** 2 + 2 * 2 * 4 * d * 64
    assert one_block == expected
    assert accounting.qwen_vision_flops(vision, [8, 4], 1) < accounting.qwen_vision_flops(vision, [8, 8], 1)


def test_bench_and_visualize_commands_run_the_qwen_families(tmp_path, capsys):
    out = tmp_path / "bench.json"
    code = main(["bench", "tiny", "--family", "qwen2.5-vl", "--retain-ratio", "0.5", "--repeats", "1", "--warmup", "0",
                 "--threads", "1", "--no-progress", "--json", str(out)])
    assert code == 0
    report = json.loads(out.read_text())
    assert report["family"] == "qwen2_5_vl" and [c["name"] for c in report["configs"]] == ["stock", "flowcut@0.5", "oracle@0.5"]
    assert "FlowCut@0.111 speed-up vs stock" in capsys.readouterr().out
    assert main(["bench", "tiny", "--family", "llava", "--retain-ratio", "0.5", "--no-progress"]) == 2
    assert "--retain-ratio applies to Qwen2-VL" in capsys.readouterr().err

    image = tmp_path / "photo.png"
    synthetic_image(1, size=IMAGE_SIZE).save(image)
    picture = tmp_path / "kept.png"
    assert main(["visualize", "tiny", str(image), "--family", "qwen2-vl", "--retain-ratio", "0.25", "--out", str(picture)]) == 0
    assert Image.open(picture).format == "PNG"


def test_qwen_picture_dims_exactly_the_dropped_units_of_each_stage():
    model, processor = build_tiny_qwen_vl("2.5", seed=0)
    image = synthetic_image(2, size=IMAGE_SIZE)
    info = kept_tokens_qwen(model, processor, image, retain_ratio=0.25)
    assert type(model).__name__ == "Qwen2_5_VLForConditionalGeneration", "the picture must leave the model stock"
    assert (info.rows, info.columns) == (8, 7) and len(info.vision_kept) == 28 and len(info.llm_kept) == 14
    assert info.llm_kept <= info.vision_kept
    picture = np.asarray(render_kept_tokens_qwen(info, scale=1), dtype=np.int16)
    view = np.asarray(info.view, dtype=np.int16)
    cell = info.unit_pixels
    for panel, kept in enumerate((info.vision_kept, info.llm_kept)):
        left, top = 20 + panel * (info.columns * cell + 20), 20 + 44
        for unit in range(info.rows * info.columns):
            row, column = divmod(unit, info.columns)
            # The unit's interior, away from the outline and the 2x2 marks.
            inner = np.s_[row * cell + 3 : row * cell + 12, column * cell + 3 : column * cell + 12]
            drawn = picture[top:, left:][inner]
            clear = np.abs(drawn - view[inner]).mean() < 2.0
            assert clear == (unit in kept), (panel, unit)
