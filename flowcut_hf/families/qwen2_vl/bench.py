"""``flowcut-hf bench --family qwen2-vl``: FlowCut on Qwen2-VL against the stock model and an oracle.

The Qwen2-VL counterpart of :mod:`flowcut_hf.bench_next` (whose measurement helpers it shares). One 1288x980 image by
default: a 92 x 70 patch grid, 6440 ViT patches, 1610 stock visual tokens (2x2 merge units).

What is compared, in one process, on ONE copy of the weights, with the runs interleaved round-robin (the order rotates
by one configuration every round):

``stock``
    the stock ``Qwen2VLForConditionalGeneration``: every patch through all 32 ViT blocks, every unit into the LLM.
``flowcut@r``
    FlowCut keeping the share ``r`` of the image's units: ``2 r`` of them (whole 2x2 units) leave the ViT, ``r`` after
    decoder layer ``flowcut_llm_prune_layer``. Same input as ``stock``.
``oracle@r``
    the stock ViT on every patch, then exactly the target (``r`` of the units, evenly spaced) into the LLM, each at its
    true M-RoPE position, with no pruning inside the LLM. No method that keeps the target for the whole LLM after a
    full ViT can have a faster LLM prefill; FlowCut feeds its first decoder layers twice the target, so it beats the
    oracle only if its cheaper ViT pays for that.

One prefill is ``model(**inputs, use_cache=True, logits_to_keep=1)`` under ``torch.inference_mode()``, image encoding
included, as ``generate()``'s first step. A measurement pass per row then records the ViT schedule, the KV cache each
decoder layer holds (measured, and compared with :func:`flowcut_hf.accounting.kv_cache_bytes` over the same
per-layer lengths) and the peak memory.

JSON (``--json FILE``): as ``--family llava-next`` writes, with ``"family": "qwen2_vl"``, ``settings.retain_ratios``
and ``settings.grid_thw``, per config ``retain_ratio``, ``vit_schedule`` (patches per block) and ``analytic``
(``vision_flops``, ``llm_flops``, ``kv_cache_bytes``), and ``targets.speedup_at_0.111`` (limit 3.0) and
``targets.flowcut_over_oracle_at_0.111`` (limit 1.0).
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn

from ... import accounting
from .accounting import qwen_vision_flops
from ...api import flowcut
from ...benchmark import (
    time_and_measure_rows,
    bench_setup,
    measure_prefill,
    versions_and_device,
    instance_snapshot,
    restore_instance,
    aligned_rows,
    compact_schedule,
    paired_ratio,
    staged_target_lines,
    stats_ms,
    uniform_indices,
)
from ...modeling.flowcut_qwen_vision import merge_units
from ...modeling.modeling_flowcut_qwen2_vl import FlowCutQwenVisionOutput
from ...registry import family_for_model

PRESET_IMAGE_SIZE = (980, 1288)  # (height, width): 70 x 92 patches, 1610 merge units at the stock pixel budget
DEFAULT_RATIOS = (0.333, 0.222, 0.111)  # the paper's Qwen2-VL settings (66.7 / 77.8 / 88.9% removed)
HEADLINE_RATIO = 0.111
TARGET_SPEEDUP = 3.0
TARGET_ORACLE_RATIO = 1.0
DEFAULT_QUESTION = "Describe this image in detail."


class OracleQwenVisualMixin:
    """A FlowCut Qwen inner model whose vision stage is the stock ViT at full length, thinned afterwards to each image's
    target, evenly spaced; the LLM stage then has nothing left to drop (only :class:`QwenModelModes` uses it)."""

    def visual_features(self, pixel_values, grid_thw, **kwargs) -> FlowCutQwenVisionOutput:
        settings = self.flowcut_settings()
        grid_thw = torch.as_tensor(grid_thw)
        counts = merge_units(grid_thw, self.visual.spatial_merge_size)
        merged = self.visual(pixel_values.type(self.visual.dtype), grid_thw=grid_thw, **kwargs).pooler_output
        targets = [settings.retained(count) for count in counts]
        kept = [uniform_indices(count, target).to(merged.device) for count, target in zip(counts, targets)]
        patches = self.visual.spatial_merge_size**2
        return FlowCutQwenVisionOutput(
            pooler_output=[tokens[index] for tokens, index in zip(torch.split(merged, counts), kept)],
            placeholder_counts=counts,
            kept_units=kept,
            token_schedule=[[count * patches] * len(self.visual.blocks) for count in counts],
            llm_targets=targets,
            prunable=[True] * len(counts),
            grid_thw=list(grid_thw),
        )


@dataclass
class QwenRow:
    name: str
    kind: str  # stock | flowcut | oracle
    retain_ratio: float | None
    samples: list[float] = field(default_factory=list)
    measured: dict = field(default_factory=dict)


class QwenModelModes:
    """Switches ONE Qwen2-VL / Qwen2.5-VL instance between the stock classes, FlowCut at a ratio and the oracle at a
    ratio (per-instance ``__class__`` swaps, as :func:`flowcut_hf.flowcut` does); :meth:`restore` undoes it all."""

    def __init__(self, model: nn.Module):
        self.family = family_for_model(model)
        self.model = model
        self.original = instance_snapshot(model)
        if not isinstance(model, self.family.model_class):
            flowcut(model)
        self.flowcut_classes = (type(model), type(model.model))
        inner = self.family.inner_model_class
        self.oracle_inner = type(f"Oracle{inner.__name__}", (OracleQwenVisualMixin, inner), {})

    @contextmanager
    def mode(self, row: QwenRow):
        model = self.model
        try:
            if row.kind == "stock":
                model.__class__, model.model.__class__ = self.family.stock_model_class, self.family.stock_inner_class
            else:
                model.__class__ = self.flowcut_classes[0]
                model.model.__class__ = self.flowcut_classes[1] if row.kind == "flowcut" else self.oracle_inner
                model.configure_flowcut(retain_ratio=row.retain_ratio, enabled=True)
            yield
        finally:
            model.__class__, model.model.__class__ = self.flowcut_classes

    def restore(self) -> None:
        restore_instance(self.model, self.original)


def question_inputs(processor, image, question: str) -> dict:
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True
    )
    return dict(processor(text=[prompt], images=[image], return_tensors="pt"))


def run_qwen_bench(
    model: nn.Module | None = None,
    processor=None,
    *,
    retain_ratios: Sequence[float] = DEFAULT_RATIOS,
    repeats: int = 3,
    warmup: int = 1,
    image=None,
    image_size: tuple[int, int] = PRESET_IMAGE_SIZE,
    question: str = DEFAULT_QUESTION,
    progress: bool = True,
    spec: str = "builtin (qwen2-vl)",
) -> dict:
    """Runs the Qwen-VL benchmark and returns its report (see the module docstring).

    ``model``/``processor``: a loaded Qwen2-VL / Qwen2.5-VL model (stock or FlowCut; switched between modes in place
    and restored at the end) and its stock processor; by default the preset. ``image``: a PIL image, by default a
    synthetic one of ``image_size`` (height, width).
    """
    setup = bench_setup(model, processor, "qwen2-vl", repeats, warmup, image, image_size)
    model, processor, parameter, timer, image = setup.model, setup.processor, setup.parameter, setup.timer, setup.image
    family = family_for_model(model)
    for ratio in retain_ratios:
        family.field_validators["flowcut_retain_ratio"](ratio)
    inputs = {k: v.to(parameter.device) for k, v in question_inputs(processor, image, question).items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(parameter.dtype)
    grid = [int(n) for n in inputs["image_grid_thw"][0]]
    units = grid[0] * grid[1] * grid[2] // 4
    num_text_tokens = inputs["input_ids"].shape[1] - units

    rows = [QwenRow("stock", "stock", None)]
    for ratio in sorted(set(retain_ratios), reverse=True):
        rows += [QwenRow(f"flowcut@{ratio:g}", "flowcut", ratio), QwenRow(f"oracle@{ratio:g}", "oracle", ratio)]
    modes = QwenModelModes(model)
    llm_prune_layer = model.config.flowcut_llm_prune_layer

    def prefill(row: QwenRow):
        return model(**inputs, use_cache=True, logits_to_keep=1)

    def measure(row: QwenRow) -> dict:
        measured, output = measure_prefill(timer, lambda: prefill(row))
        del output
        measured.update(vit_schedule=[4 * units] * len(model.model.visual.blocks), tokens_into_llm=units, merged_units=units)
        if row.kind != "stock":
            features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
            measured["vit_schedule"] = [int(n) for n in features.token_schedule[0]]
            measured["tokens_into_llm"] = len(features.pooler_output[0])
            measured["tokens_after_llm_stage"] = features.llm_targets[0]
            if row.kind == "flowcut":  # the oracle's merger runs on every unit, then thins
                measured["merged_units"] = len(features.pooler_output[0])
        return measured

    time_and_measure_rows(rows, modes, timer, prefill, warmup, repeats, progress, measure)

    stock_stats = stats_ms(rows[0].samples)
    configs = []
    stock_flops = None
    for row in rows:
        stats = stats_ms(row.samples)
        lengths = row.measured["layer_lengths"]
        vision_flops = qwen_vision_flops(
            model.config.vision_config, row.measured["vit_schedule"], row.measured["merged_units"]
        )
        llm_flops = accounting.llm_prefill_flops(model.config.text_config, lengths)
        kv_analytic = accounting.kv_cache_bytes(model.config.text_config, lengths, dtype=parameter.dtype)
        if stock_flops is None:
            stock_flops = (vision_flops, llm_flops)
        oracle = next((r for r in rows if r.kind == "oracle" and r.retain_ratio == row.retain_ratio), None)
        is_flowcut = row.kind == "flowcut"
        configs.append({
            "name": row.name,
            "kind": row.kind,
            "retain_ratio": row.retain_ratio,
            "tokens_into_llm": row.measured["tokens_into_llm"],
            "tokens_after_llm_stage": row.measured.get("tokens_after_llm_stage", row.measured["tokens_into_llm"]),
            "llm_layer_seq_lens": lengths,
            "prefill_ms": stats,
            "speedup_vs_stock": stock_stats["median"] / stats["median"],
            "paired_speedup_vs_stock": paired_ratio(rows[0].samples, row.samples),
            "flowcut_over_oracle": stats["median"] / stats_ms(oracle.samples)["median"] if is_flowcut else None,
            "paired_flowcut_over_oracle": paired_ratio(row.samples, oracle.samples) if is_flowcut else None,
            "vit_schedule": row.measured["vit_schedule"],
            "analytic": {"vision_flops": vision_flops, "llm_flops": llm_flops, "kv_cache_bytes": kv_analytic},
            "flops_ratio_vs_stock": (vision_flops + llm_flops) / sum(stock_flops),
            "kv_cache": {"measured_bytes": row.measured["kv_bytes"], "analytic_bytes": kv_analytic,
                         "match": row.measured["kv_bytes"] == kv_analytic, "measured_layer_lengths": lengths},
            "peak_memory": row.measured["memory"],
        })

    headline = next((c for c in configs if c["kind"] == "flowcut" and c["retain_ratio"] == HEADLINE_RATIO), None)

    def target(key, paired_key, limit, higher_is_better):
        value = headline and headline[key]
        met = None if value is None else bool(value >= limit if higher_is_better else value <= limit)
        return {"value": value, "paired": headline and headline[paired_key], "limit": limit, "met": met}

    kv_match = all(c["kv_cache"]["match"] for c in configs)
    vision, text = model.config.vision_config, model.config.text_config
    return {
        "schema_version": 1,
        "tool": "flowcut-hf bench",
        "family": family.name,
        "model": {
            "spec": spec,
            "class": family.stock_model_class.__name__,
            "num_parameters": int(sum(p.numel() for p in model.parameters())),
            "vision": {"layers": vision.depth, "hidden": getattr(vision, "embed_dim", None) or vision.hidden_size,
                       "heads": vision.num_heads, "patch_size": vision.patch_size},
            "text": {"layers": text.num_hidden_layers, "hidden": text.hidden_size, "heads": text.num_attention_heads,
                     "kv_heads": text.num_key_value_heads, "mlp": text.intermediate_size, "vocab": text.vocab_size},
        },
        **versions_and_device(timer),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "settings": {
            "repeats": repeats, "warmup": warmup, "question": question, "image_size": [image.height, image.width],
            "grid_thw": grid, "stock_image_tokens": units, "num_text_tokens": int(num_text_tokens),
            "retain_ratios": sorted(set(float(r) for r in retain_ratios), reverse=True),
            "llm_prune_layer": llm_prune_layer, "order": "interleaved, rotating", "oracle_selection": "uniform",
            "timer": "cuda_events" if timer.cuda else "perf_counter", "memory_method": rows[0].measured["memory"]["method"],
        },
        "configs": configs,
        "targets": {
            f"speedup_at_{HEADLINE_RATIO}": target("speedup_vs_stock", "paired_speedup_vs_stock", TARGET_SPEEDUP, True),
            f"flowcut_over_oracle_at_{HEADLINE_RATIO}": target(
                "flowcut_over_oracle", "paired_flowcut_over_oracle", TARGET_ORACLE_RATIO, False
            ),
            "kv_cache_matches_analytic": {"value": kv_match, "met": kv_match},
        },
    }


def format_qwen_table(report: dict) -> str:
    """The human-readable table for a report from :func:`run_qwen_bench`."""
    settings, model = report["settings"], report["model"]
    mib = 1024**2
    header = ("config", "tok in LLM", "LLM seq (per layer)", "median ms", "IQR ms", "speed-up", "/oracle",
              "ViT GFLOP", "LLM GFLOP", "KV MiB", "peak MiB")
    data = []
    for c in report["configs"]:
        p = c["prefill_ms"]
        tokens = str(c["tokens_into_llm"]) + (
            f"->{c['tokens_after_llm_stage']}" if c["tokens_after_llm_stage"] != c["tokens_into_llm"] else ""
        )
        data.append((
            c["name"], tokens, compact_schedule(c["llm_layer_seq_lens"]), f"{p['median']:.0f}", f"{p['iqr']:.0f}",
            f"{c['speedup_vs_stock']:.2f}x", "-" if c["flowcut_over_oracle"] is None else f"{c['flowcut_over_oracle']:.3f}",
            f"{c['analytic']['vision_flops'] / 1e9:.0f}", f"{c['analytic']['llm_flops'] / 1e9:.0f}",
            f"{c['kv_cache']['measured_bytes'] / mib:.2f}", f"{c['peak_memory']['bytes'] / mib:.0f}",
        ))
    table, name_width = aligned_rows(header, data)
    params = model["num_parameters"] / 1e6
    threads = report["device"]["torch_threads"]
    height, width = settings["image_size"]
    t, h, w = settings["grid_thw"]
    out = [
        f"flowcut-hf bench: {model['spec']} ({params:.0f}M params; ViT {model['vision']['layers']}L "
        f"d{model['vision']['hidden']}, LLM {model['text']['layers']}L d{model['text']['hidden']}) on "
        f"{report['device']['type']} ({report['device']['name']}, {threads} torch thread{'s' if threads != 1 else ''}), "
        f"{report['dtype']}",
        f"one {width}x{height} image: {h}x{w} patches, {settings['stock_image_tokens']} stock visual tokens (2x2 units); "
        f"{settings['num_text_tokens']} text tokens; prefill with use_cache=True, logits_to_keep=1; "
        f"{settings['repeats']} timed rounds after {settings['warmup']} warm-up, configurations interleaved",
        "",
        *table,
        "",
        "ViT patches per block (all 32 blocks; the cut to 2x the target follows the last one):",
    ]
    for c in report["configs"]:
        out.append(f"  {c['name']:<{name_width}}  {compact_schedule(c['vit_schedule'])}")
    out += staged_target_lines(
        report["targets"], f"FlowCut@{HEADLINE_RATIO}", f"speedup_at_{HEADLINE_RATIO}",
        f"flowcut_over_oracle_at_{HEADLINE_RATIO}",
    )
    return "\n".join(out)


__all__ = ["OracleQwenVisualMixin", "QwenModelModes", "format_qwen_table", "run_qwen_bench"]
