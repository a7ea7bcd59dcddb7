"""``flowcut-hf bench --family llava-next``: FlowCut on LLaVA-NeXT against the stock model and an oracle.

The LLaVA-NeXT counterpart of :mod:`flowcut_hf.bench` (whose measurement helpers it uses). One 672x672 image by
default: 5 anyres crops, 2928 stock visual tokens (the paper's "2880" = 5 x 576 patches, plus 48 newline tokens).

What is compared, in one process, on ONE copy of the weights, with the runs interleaved round-robin (the order
rotates by one configuration every round):

``stock``
    the stock ``LlavaNextForConditionalGeneration``: every crop through all CLIP layers, every visual token through
    every decoder layer.
``flowcut@N``
    FlowCut keeping N visual tokens per image: ``N // 2`` patches per crop in the vision encoder, then N after decoder
    layer ``flowcut_llm_prune_layer``. Same input as ``stock`` (the stock processor's placeholder count).
``oracle@N``
    the stock vision encoder on every crop at full length, then exactly N visual tokens into the LLM (N evenly
    spaced ones of the stock features), with a prompt of N placeholders and no pruning inside the LLM. No method
    that keeps N tokens for the whole LLM after a full encoder can have a faster LLM prefill. FlowCut feeds its first
    ``flowcut_llm_prune_layer + 1`` decoder layers more than N tokens, so it beats the oracle only if its cheaper
    encoder pays for that.

One prefill is ``model(**inputs, use_cache=True, logits_to_keep=1)`` under ``torch.inference_mode()``, image
encoding included, as ``generate()``'s first step. A measurement pass per row then records the vision schedule, the
KV cache each decoder layer holds (measured, and compared with :func:`flowcut_hf.accounting.next_prefill_account`,
which counts every layer's own length) and the peak memory, as :mod:`flowcut_hf.bench` does.

JSON (``--json FILE``)::

    {"schema_version": 1, "tool": "flowcut-hf bench", "family": "llava_next", "versions": {...}, "model": {...},
     "device": {...}, "dtype": str,
     "settings": {"repeats", "warmup", "prompt", "image_size": [h, w], "crops", "stock_image_tokens",
                  "num_text_tokens", "target_nums", "llm_prune_layer", "order", "oracle_selection", "timer",
                  "memory_method"},
     "configs": [{"name", "kind": "stock" | "flowcut" | "oracle", "target_num": int | null,
                  "tokens_into_llm": int, "tokens_after_llm_stage": int, "llm_layer_seq_lens": [int],
                  "prefill_ms": {...as in bench}, "speedup_vs_stock", "paired_speedup_vs_stock",
                  "flowcut_over_oracle", "paired_flowcut_over_oracle", "token_schedule": [int],
                  "kept_per_crop": [crops, kept] | null, "analytic": {...}, "flops_ratio_vs_stock": {...},
                  "kv_cache": {"measured_bytes", "analytic_bytes", "match", "measured_layer_lengths": [int]},
                  "peak_memory": {...}}],
     "targets": {"speedup_at_160": {"value", "paired", "limit": 3.2, "met"},
                 "flowcut_over_oracle_at_160": {"value", "paired", "limit": 1.0, "met"},
                 "kv_cache_matches_analytic": {"value": bool, "met": bool}}}
"""

from __future__ import annotations

from collections.abc import Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from torch import nn
from transformers import LlavaNextModel

from ... import accounting
from ...accounting import AnyresImageTokens
from ...api import flowcut
from ...benchmark import (
    time_and_measure_rows,
    bench_setup,
    measure_prefill,
    versions_and_device,
    DEFAULT_PROMPT,
    aligned_rows,
    report_headline,
    staged_target_lines,
    compact_schedule,
    model_summary,
    paired_ratio,
    record_vision_schedule,
    stats_ms,
    UniformOracleMixin,
    with_placeholder_span,
)
from ...modeling.modeling_flowcut_llava_next import stock_token_count
from ...registry import family_named

PRESET_IMAGE_SIZE = (672, 672)  # (height, width): fills the 2x2 grid exactly, 5 crops
DEFAULT_TARGETS = (160, 320, 640)
TARGET_SPEEDUP = 3.2  # the paper's headline LLaVA-NeXT-7B prefill speed-up at 160 tokens
TARGET_ORACLE_RATIO = 1.0
TARGET_N = 160


class OracleLlavaNextModel(UniformOracleMixin, LlavaNextModel):
    """The stock inner model with the benches' uniform oracle (only the modes class puts an instance in it)."""


@dataclass
class NextRow:
    name: str
    kind: str  # stock | flowcut | oracle
    target_num: int | None
    inputs: dict = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    measured: dict = field(default_factory=dict)


class NextModelModes:
    """Switches ONE LLaVA-NeXT instance between the stock classes, FlowCut at N and the oracle at N (per-instance
    ``__class__`` swaps, as :func:`flowcut_hf.flowcut` does); :meth:`restore` puts the original classes back."""

    def __init__(self, model: nn.Module):
        self.family = family_named("llava_next")
        self.model = model
        self.original = (type(model), type(model.model), type(model.config), dict(model.config.__dict__))
        if not isinstance(model, self.family.model_class):
            flowcut(model, target_num=DEFAULT_TARGETS[0])
        self.flowcut_classes = (type(model), type(model.model))

    @contextmanager
    def mode(self, row: NextRow):
        model = self.model
        try:
            if row.kind == "flowcut":
                model.__class__, model.model.__class__ = self.flowcut_classes
                model.configure_flowcut(target_num=row.target_num, enabled=True)
            elif row.kind == "oracle":
                model.__class__, model.model.__class__ = self.family.stock_model_class, OracleLlavaNextModel
                model.model.oracle_tokens = row.target_num
            else:
                model.__class__, model.model.__class__ = self.family.stock_model_class, self.family.stock_inner_class
            yield
        finally:
            model.__class__, model.model.__class__ = self.flowcut_classes
            model.model.__dict__.pop("oracle_tokens", None)

    def restore(self) -> None:
        model_class, inner_class, config_class, settings = self.original
        self.model.__class__, self.model.model.__class__ = model_class, inner_class
        self.model.config.__class__ = config_class
        for name in self.family.field_validators:
            if name in settings:
                setattr(self.model.config, name, settings[name])
            else:
                self.model.config.__dict__.pop(name, None)


def prompt_inputs(processor, image, prompt: str, image_token_id: int, placeholders: int | None) -> dict:
    """The stock processor's inputs for one image; with ``placeholders``, its span holds that many instead."""
    inputs = dict(processor(images=image, text=f"USER: <image>\n{prompt} ASSISTANT:", return_tensors="pt"))
    return inputs if placeholders is None else with_placeholder_span(inputs, image_token_id, placeholders)


def image_tokens_of(row: NextRow, config, image_size) -> AnyresImageTokens:
    """How the row's image tokens flowed, from what its measurement pass saw."""
    stock = AnyresImageTokens.stock(config, image_size)
    if row.kind == "stock":
        return stock
    if row.kind == "oracle":
        return AnyresImageTokens(stock.crops, stock.vision_schedule, row.target_num, row.target_num)
    return AnyresImageTokens(
        crops=row.measured["kept_per_crop"][0],
        vision_schedule=tuple(row.measured["reported_schedule"]),
        tokens_into_llm=row.measured["tokens_into_llm"],
        tokens_after_llm_stage=row.measured["tokens_after_llm_stage"],
    )


def run_next_bench(
    model: nn.Module | None = None,
    processor=None,
    *,
    target_nums: Sequence[int] = DEFAULT_TARGETS,
    repeats: int = 3,
    warmup: int = 1,
    image=None,
    image_size: tuple[int, int] = PRESET_IMAGE_SIZE,
    prompt: str = DEFAULT_PROMPT,
    progress: bool = True,
    spec: str = "builtin (llava-next)",
) -> dict:
    """Runs the LLaVA-NeXT benchmark and returns its report (see the module docstring).

    ``model``/``processor``: a loaded LLaVA-NeXT model (stock or FlowCut; switched between modes in place and
    restored at the end) and its stock processor; by default the preset. ``image``: a PIL image, by default a
    synthetic one of ``image_size`` (height, width).
    """
    family = family_named("llava_next")
    for target in target_nums:
        family.field_validators["flowcut_target_num"](target)
    setup = bench_setup(model, processor, "llava-next", repeats, warmup, image, image_size)
    model, processor, parameter, timer, image = setup.model, setup.processor, setup.parameter, setup.timer, setup.image
    image_size = (image.height, image.width)
    config = model.config
    stock_tokens = stock_token_count(config, image_size)

    rows = [NextRow("stock", "stock", None)]
    for target in sorted(set(target_nums)):
        rows += [NextRow(f"flowcut@{target}", "flowcut", target), NextRow(f"oracle@{target}", "oracle", target)]
    for row in rows:
        count = row.target_num if row.kind == "oracle" else None
        inputs = prompt_inputs(processor, image, prompt, config.image_token_id, count)
        row.inputs = {k: v.to(parameter.device) for k, v in inputs.items()}
        row.inputs["pixel_values"] = row.inputs["pixel_values"].to(parameter.dtype)
    num_text_tokens = rows[0].inputs["input_ids"].shape[1] - stock_tokens

    modes = NextModelModes(model)
    llm_prune_layer = model.config.flowcut_llm_prune_layer

    def prefill(row: NextRow):
        return model(**row.inputs, use_cache=True, logits_to_keep=1)

    def measure(row: NextRow) -> dict:
        with record_vision_schedule(model) as lengths:
            measured, output = measure_prefill(timer, lambda: prefill(row))
        del output
        measured = {"schedule": list(lengths), **measured}
        if row.kind == "flowcut":
            features = model.model.get_image_features(
                pixel_values=row.inputs["pixel_values"], image_sizes=row.inputs["image_sizes"]
            )
            measured["kept_per_crop"] = list(features.keep_indices[0].shape)
            measured["tokens_into_llm"] = len(features.pooler_output[0])
            measured["tokens_after_llm_stage"] = len(model(**row.inputs).llm_keep_indices[0])
            measured["reported_schedule"] = [int(n) for n in features.token_schedule[0]]
        return measured

    time_and_measure_rows(rows, modes, timer, prefill, warmup, repeats, progress, measure)

    stock_stats = stats_ms(rows[0].samples)
    accounts, configs = {}, []
    for row in rows:
        tokens = image_tokens_of(row, config, image_size)
        if row.measured["schedule"] != list(tokens.vision_schedule):
            raise RuntimeError(f"{row.name}: the vision encoder ran {row.measured['schedule']}, not {tokens.vision_schedule}")
        prune_layer = llm_prune_layer if row.kind == "flowcut" else None
        accounts[row.name] = accounting.next_prefill_account(
            config, num_text_tokens, [tokens], prune_layer, kv_dtype=parameter.dtype
        )
    for row in rows:
        stats = stats_ms(row.samples)
        account = accounts[row.name]
        oracle = next((r for r in rows if r.kind == "oracle" and r.target_num == row.target_num), None)
        is_flowcut = row.kind == "flowcut"
        configs.append({
            "name": row.name,
            "kind": row.kind,
            "target_num": row.target_num,
            "tokens_into_llm": account.llm_layer_seq_lens[0] - num_text_tokens,
            "tokens_after_llm_stage": account.llm_seq_len - num_text_tokens,
            "llm_layer_seq_lens": list(account.llm_layer_seq_lens),
            "prefill_ms": stats,
            "speedup_vs_stock": stock_stats["median"] / stats["median"],
            "paired_speedup_vs_stock": paired_ratio(rows[0].samples, row.samples),
            "flowcut_over_oracle": stats["median"] / stats_ms(oracle.samples)["median"] if is_flowcut else None,
            "paired_flowcut_over_oracle": paired_ratio(row.samples, oracle.samples) if is_flowcut else None,
            "token_schedule": row.measured["schedule"],
            "kept_per_crop": row.measured.get("kept_per_crop"),
            "analytic": account.as_dict(),
            "flops_ratio_vs_stock": account.ratio_to(accounts["stock"]),
            "kv_cache": {
                "measured_bytes": row.measured["kv_bytes"],
                "analytic_bytes": account.kv_cache_bytes,
                "match": row.measured["kv_bytes"] == account.kv_cache_bytes
                and row.measured["layer_lengths"] == list(account.llm_layer_seq_lens),
                "measured_layer_lengths": row.measured["layer_lengths"],
            },
            "peak_memory": row.measured["memory"],
        })

    named = {c["name"]: c for c in configs}
    at_target = named.get(f"flowcut@{TARGET_N}")

    def target(value, paired, limit, higher_is_better):
        met = None if value is None else bool(value >= limit if higher_is_better else value <= limit)
        return {"value": value, "paired": paired, "limit": limit, "met": met}

    kv_match = all(c["kv_cache"]["match"] for c in configs)
    return {
        "schema_version": 1,
        "tool": "flowcut-hf bench",
        "family": family.name,
        "model": model_summary(spec, model),
        **versions_and_device(timer),
        "dtype": str(parameter.dtype).removeprefix("torch."),
        "settings": {
            "repeats": repeats,
            "warmup": warmup,
            "prompt": prompt,
            "image_size": list(image_size),
            "crops": AnyresImageTokens.stock(config, image_size).crops,
            "stock_image_tokens": stock_tokens,
            "num_text_tokens": int(num_text_tokens),
            "target_nums": sorted(set(int(t) for t in target_nums)),
            "llm_prune_layer": llm_prune_layer,
            "order": "interleaved, rotating",
            "oracle_selection": "uniform",
            "timer": "cuda_events" if timer.cuda else "perf_counter",
            "memory_method": rows[0].measured["memory"]["method"],
        },
        "configs": configs,
        "targets": {
            "speedup_at_160": target(
                at_target and at_target["speedup_vs_stock"], at_target and at_target["paired_speedup_vs_stock"],
                TARGET_SPEEDUP, True,
            ),
            "flowcut_over_oracle_at_160": target(
                at_target and at_target["flowcut_over_oracle"], at_target and at_target["paired_flowcut_over_oracle"],
                TARGET_ORACLE_RATIO, False,
            ),
            "kv_cache_matches_analytic": {"value": kv_match, "met": kv_match},
        },
    }


def format_next_table(report: dict) -> str:
    """The human-readable table for a report from :func:`run_next_bench`."""
    settings = report["settings"]
    mib = 1024**2
    header = ("config", "tok in LLM", "LLM seq (per layer)", "median ms", "IQR ms", "speed-up", "/oracle",
              "vis GFLOP", "LLM GFLOP", "KV MiB", "peak MiB")
    data = []
    for c in report["configs"]:
        p = c["prefill_ms"]
        lengths = c["llm_layer_seq_lens"]
        seq = compact_schedule(lengths)
        tokens = str(c["tokens_into_llm"]) + (f"->{c['tokens_after_llm_stage']}" if c["tokens_after_llm_stage"] != c["tokens_into_llm"] else "")
        data.append((
            c["name"], tokens, seq, f"{p['median']:.1f}", f"{p['iqr']:.1f}", f"{c['speedup_vs_stock']:.2f}x",
            "-" if c["flowcut_over_oracle"] is None else f"{c['flowcut_over_oracle']:.3f}",
            f"{c['analytic']['vision_flops'] / 1e9:.1f}", f"{c['analytic']['llm_flops'] / 1e9:.1f}",
            f"{c['kv_cache']['measured_bytes'] / mib:.2f}", f"{c['peak_memory']['bytes'] / mib:.1f}",
        ))
    table, name_width = aligned_rows(header, data)
    height, width = settings["image_size"]
    out = [
        report_headline(report),
        f"one {width}x{height} image: {settings['crops']} anyres crops, {settings['stock_image_tokens']} stock visual "
        f"tokens; {settings['num_text_tokens']} text tokens; prefill with use_cache=True, logits_to_keep=1; "
        f"{settings['repeats']} timed rounds after {settings['warmup']} warm-up, configurations interleaved",
        "",
        *table,
        "",
        "vision-encoder tokens per layer that ran, for every crop (CLS included):",
    ]
    for c in report["configs"]:
        out.append(f"  {c['name']:<{name_width}}  {compact_schedule(c['token_schedule'])}")
    out += staged_target_lines(report["targets"], "FlowCut@160", "speedup_at_160", "flowcut_over_oracle_at_160")
    return "\n".join(out)


__all__ = ["OracleLlavaNextModel", "format_next_table", "run_next_bench"]
