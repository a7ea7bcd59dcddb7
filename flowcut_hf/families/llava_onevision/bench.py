"""``flowcut-hf bench --preset llava-onevision``: VFlowOpt on LLaVA-OneVision against the stock model.

One square 768x768 image by default: the 2x2 anyres grid, 3699 stock visual tokens (the spec's worked example). The
rows, in one process, on ONE copy of the weights, interleaved round-robin as the other benches do:

``stock``
    the stock ``LlavaOnevisionForConditionalGeneration``: every token through every decoder layer.
``vflowopt@P``
    VFlowOpt's released preset P (10%, 25%, 50%: the share of visual tokens kept, averaged over the decoder layers).
``flowcut@N``
    FlowCut at the matched count N = P of the stock visual tokens (370 of 3699 at 10%): every crop keeps N // 2
    patches in the vision tower, the image N after decoder layer 1. Same input as ``stock``.
``oracle@P``
    the stock model on a prompt whose image span holds P of the stock visual tokens, the stock features thinned to
    them (evenly spaced) after the full vision tower: the same average share as ``vflowopt@P`` at every decoder layer,
    with no importance map, no recycling and no pruning inside the LLM. It is the prefill a method that spends nothing
    on choosing tokens would have; VFlowOpt's map and stage 0 cost what it is slower than it.

Each row reports the prefill time, the tokens each decoder stage holds, the KV cache (measured per layer, compared with
:func:`flowcut_hf.accounting.kv_cache_bytes`, and its reduction against stock), the LLM's analytic FLOPs and the peak
memory. Targets (the paper's headline): at 10%, the KV cache 89% smaller (within 1 point) and the prefill 3.8x faster.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn
from transformers import LlavaOnevisionModel

from ... import accounting
from ...api import flowcut, prune
from ...benchmark import (
    time_and_measure_rows,
    bench_setup,
    measure_prefill,
    versions_and_device,
    aligned_rows,
    compact_schedule,
    instance_snapshot,
    paired_ratio,
    restore_instance,
    stats_ms,
    UniformOracleMixin,
    with_placeholder_span,
)
from ...registry import family_named

PRESET_IMAGE_SIZE = (768, 768)
DEFAULT_PRESETS = ("10%", "25%", "50%")
HEADLINE = "10%"
TARGET_KV_REDUCTION = 0.89
TARGET_SPEEDUP = 3.8


@dataclass
class OnevisionRow:
    name: str
    preset: str | None
    kind: str = "vflowopt"  # stock | vflowopt | flowcut | oracle
    inputs: dict = field(default_factory=dict)
    target_num: int | None = None
    samples: list[float] = field(default_factory=list)
    measured: dict = field(default_factory=dict)


class OracleLlavaOnevisionModel(UniformOracleMixin, LlavaOnevisionModel):
    """The stock inner model with the benches' uniform oracle (only the modes class puts an instance in it)."""


class OnevisionModes:
    """Switches ONE LLaVA-OneVision instance between the stock classes and VFlowOpt presets; :meth:`restore` undoes it."""

    def __init__(self, model: nn.Module):
        self.family = family_named("llava_onevision")
        self.model = model
        self.original = instance_snapshot(model)
        prune(model, method="vflowopt")
        self.pruning_classes = (type(model), type(model.model))

    @contextmanager
    def mode(self, row: OnevisionRow):
        model = self.model
        try:
            if row.kind == "stock":
                model.__class__, model.model.__class__ = self.family.stock_model_class, self.family.stock_inner_class
            elif row.kind == "flowcut":
                flowcut(model, target_num=row.target_num)
            elif row.kind == "oracle":
                model.__class__, model.model.__class__ = self.family.stock_model_class, OracleLlavaOnevisionModel
                model.model.oracle_tokens = int((row.inputs["input_ids"] == model.config.image_token_id).sum())
            else:
                prune(model, method="vflowopt", preset=row.preset)
            yield
        finally:
            model.__class__, model.model.__class__ = self.pruning_classes
            model.model.__dict__.pop("oracle_tokens", None)

    def restore(self) -> None:
        restore_instance(self.model, self.original)


def run_onevision_bench(
    model: nn.Module | None = None,
    processor=None,
    *,
    presets=DEFAULT_PRESETS,
    repeats: int = 3,
    warmup: int = 1,
    image=None,
    image_size: tuple[int, int] = PRESET_IMAGE_SIZE,
    question: str = "Describe this image in detail.",
    progress: bool = True,
    spec: str = "builtin (llava-onevision)",
) -> dict:
    """Runs the LLaVA-OneVision benchmark and returns its report (see the module docstring)."""
    from ...modeling.configuration_flowcut_llava_onevision import ONEVISION_PRESETS

    unknown = [p for p in presets if p not in ONEVISION_PRESETS]
    if unknown:
        raise ValueError(f"unknown VFlowOpt presets {unknown}; released: {sorted(ONEVISION_PRESETS)}")
    setup = bench_setup(model, processor, "llava-onevision", repeats, warmup, image, image_size)
    model, processor, parameter, timer, image = setup.model, setup.processor, setup.parameter, setup.timer, setup.image
    prompt = processor.apply_chat_template(
        [{"role": "user", "content": [{"type": "image"}, {"type": "text", "text": question}]}], add_generation_prompt=True
    )
    inputs = {k: v.to(parameter.device) for k, v in processor(text=[prompt], images=[image], return_tensors="pt").items()}
    inputs["pixel_values"] = inputs["pixel_values"].to(parameter.dtype)
    visual_tokens = int((inputs["input_ids"] == model.config.image_token_id).sum())
    rows = [OnevisionRow("stock", None, "stock", inputs)]
    for preset in presets:
        matched = max(2, round(float(preset.rstrip("%")) / 100 * visual_tokens))
        oracle_inputs = with_placeholder_span(inputs, model.config.image_token_id, matched)
        rows += [OnevisionRow(f"vflowopt@{preset}", preset, "vflowopt", inputs),
                 OnevisionRow(f"flowcut@{matched}", preset, "flowcut", inputs, target_num=matched),
                 OnevisionRow(f"oracle@{preset}", preset, "oracle", oracle_inputs)]
    modes = OnevisionModes(model)

    def prefill(row: OnevisionRow):
        return model(**row.inputs, use_cache=True, logits_to_keep=1)

    def measure(row: OnevisionRow) -> dict:
        return measure_prefill(timer, lambda: prefill(row))[0]

    time_and_measure_rows(rows, modes, timer, prefill, warmup, repeats, progress, measure)

    text = model.config.text_config
    stock_stats = stats_ms(rows[0].samples)
    stock_kv = rows[0].measured["kv_bytes"]
    text_tokens = inputs["input_ids"].shape[1] - visual_tokens
    configs = []
    samples = {(row.kind, row.preset): row.samples for row in rows}
    for row in rows:
        stats = stats_ms(row.samples)
        lengths = row.measured["layer_lengths"]
        analytic_kv = accounting.kv_cache_bytes(text, lengths, dtype=parameter.dtype)
        oracle = samples.get(("oracle", row.preset)) if row.kind in ("vflowopt", "flowcut") else None
        configs.append({
            "name": row.name,
            "kind": row.kind,
            "preset": row.preset,
            "target_num": row.target_num,
            "visual_tokens_per_layer": [n - text_tokens for n in lengths],
            "llm_layer_seq_lens": lengths,
            "prefill_ms": stats,
            "speedup_vs_stock": stock_stats["median"] / stats["median"],
            "paired_speedup_vs_stock": paired_ratio(rows[0].samples, row.samples),
            "over_oracle": stats["median"] / stats_ms(oracle)["median"] if oracle else None,
            "llm_flops": accounting.llm_prefill_flops(text, lengths),
            "kv_cache": {"measured_bytes": row.measured["kv_bytes"], "analytic_bytes": analytic_kv,
                         "match": row.measured["kv_bytes"] == analytic_kv,
                         "reduction_vs_stock": 1 - row.measured["kv_bytes"] / stock_kv},
            "peak_memory": row.measured["memory"],
        })
    headline = next((c for c in configs if c["preset"] == HEADLINE and c["kind"] == "vflowopt"), None)
    kv_reduction = headline and headline["kv_cache"]["reduction_vs_stock"]
    speed = headline and headline["speedup_vs_stock"]
    vision = model.config.vision_config
    return {
        "schema_version": 1,
        "tool": "flowcut-hf bench",
        "family": "llava_onevision",
        "model": {"spec": spec, "num_parameters": int(sum(p.numel() for p in model.parameters())),
                  "vision": {"layers": vision.num_hidden_layers, "hidden": vision.hidden_size},
                  "text": {"layers": text.num_hidden_layers, "hidden": text.hidden_size}},
        **versions_and_device(timer),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "settings": {"repeats": repeats, "warmup": warmup, "question": question, "image_size": [image.height, image.width],
                     "stock_image_tokens": visual_tokens, "num_text_tokens": int(text_tokens), "presets": list(presets),
                     "order": "interleaved, rotating", "oracle_selection": "uniform", "timer": "cuda_events" if timer.cuda else "perf_counter"},
        "configs": configs,
        "targets": {
            "kv_reduction_at_10%": {"value": kv_reduction, "limit": TARGET_KV_REDUCTION,
                                     "met": None if kv_reduction is None else abs(kv_reduction - TARGET_KV_REDUCTION) <= 0.01},
            "speedup_at_10%": {"value": speed, "paired": headline and headline["paired_speedup_vs_stock"],
                               "limit": TARGET_SPEEDUP, "met": None if speed is None else speed >= TARGET_SPEEDUP},
            "kv_cache_matches_analytic": {"value": all(c["kv_cache"]["match"] for c in configs),
                                          "met": all(c["kv_cache"]["match"] for c in configs)},
        },
    }


def format_onevision_table(report: dict) -> str:
    settings, model = report["settings"], report["model"]
    mib = 1024**2
    header = ("config", "visual tok per stage", "median ms", "IQR ms", "speed-up", "/oracle", "LLM GFLOP", "KV MiB", "KV saved",
              "peak MiB")
    data = []
    for c in report["configs"]:
        p = c["prefill_ms"]
        data.append((
            c["name"], compact_schedule(c["visual_tokens_per_layer"]), f"{p['median']:.0f}", f"{p['iqr']:.0f}",
            f"{c['speedup_vs_stock']:.2f}x", "-" if c["over_oracle"] is None else f"{c['over_oracle']:.2f}",
            f"{c['llm_flops'] / 1e9:.0f}", f"{c['kv_cache']['measured_bytes'] / mib:.2f}",
            f"{c['kv_cache']['reduction_vs_stock']:.1%}", f"{c['peak_memory']['bytes'] / mib:.0f}",
        ))
    table, _ = aligned_rows(header, data)
    threads = report["device"]["torch_threads"]
    height, width = settings["image_size"]
    targets = report["targets"]
    kv, speed = targets["kv_reduction_at_10%"], targets["speedup_at_10%"]

    def verdict(entry):
        return "n/a (row not run)" if entry["met"] is None else ("met" if entry["met"] else "MISSED")

    def number(value, spec):
        return "-" if value is None else format(value, spec)

    return "\n".join([
        f"flowcut-hf bench: {model['spec']} ({model['num_parameters'] / 1e6:.0f}M params; SigLIP {model['vision']['layers']}L "
        f"d{model['vision']['hidden']}, LLM {model['text']['layers']}L d{model['text']['hidden']}) on "
        f"{report['device']['type']} ({report['device']['name']}, {threads} torch thread{'s' if threads != 1 else ''}), "
        f"{report['dtype']}",
        f"one {width}x{height} image: {settings['stock_image_tokens']} stock visual tokens; {settings['num_text_tokens']} "
        f"text tokens; prefill with use_cache=True, logits_to_keep=1; {settings['repeats']} timed rounds after "
        f"{settings['warmup']} warm-up, configurations interleaved",
        "",
        *table,
        "",
        "oracle@P: the stock model with P of the visual tokens (evenly spaced) at every layer, nothing spent choosing them; "
        "flowcut@N: FlowCut keeping the same share, N per image after decoder layer 1; "
        "/oracle: the row's prefill time over the oracle's at the same share.",
        "KV cache: measured from the returned cache (every layer's own length), "
        f"{'equal to' if targets['kv_cache_matches_analytic']['met'] else 'DIFFERENT from'} the analytic count for every row.",
        "",
        "targets (measured, not asserted):",
        f"  VFlowOpt@10% KV cache saved       {number(kv['value'], '.1%')}, target 89% +- 1 point: {verdict(kv)}",
        f"  VFlowOpt@10% speed-up vs stock    {number(speed['value'], '.2f')}x (paired {number(speed['paired'], '.2f')}x), "
        f"limit >= {speed['limit']:.1f}x: {verdict(speed)}",
    ])


__all__ = ["OnevisionModes", "OracleLlavaOnevisionModel", "format_onevision_table", "run_onevision_bench"]
