"""``flowcut-hf bench`` on LLaVA-1.5: prefill latency, FLOPs, KV cache and memory of FlowCut against the stock model
and an oracle.

Usage::

    flowcut-hf bench [MODEL] --target-num 64 [--target-num 128 ...] --repeats 5 --warmup 1 --json bench.json \
        [--device cpu|cuda] [--dtype auto|float32|float16|bfloat16]

``MODEL`` is ``builtin`` (the default: LLaVA-1.5-7B geometry at 1/4 width, random weights, no download, see
:func:`flowcut_hf.presets.bench_preset_config`), ``tiny`` (the test model of :mod:`flowcut_hf.tiny`), a local folder
or a Hub repo id holding a stock LLaVA-1.5 or a FlowCut export (loaded with ``AutoModelForImageTextToText`` and
``AutoProcessor``, ``trust_remote_code=True``).

What is compared, in one process, on ONE copy of the weights, with the runs interleaved round-robin (the order rotates
by one configuration every round, so drift in machine load hits every configuration alike):

``stock``
    the unpruned model, run through the stock transformers classes (``LlavaForConditionalGeneration`` /
    ``LlavaModel``): the CLIP tower runs all its layers on 577 tokens and the LLM sees 576 image tokens.
``flowcut@N``
    FlowCut keeping N tokens per image (``model.configure_flowcut(target_num=N)``), prompt with N placeholders.
``oracle@N``
    the stock classes and the full-length vision encoder, but only N image tokens reach the LLM: a forward pre-hook
    on this instance's ``multi_modal_projector`` keeps N uniformly spaced features (a raster sub-grid) before the
    projection. The prompt has N placeholders. No method that keeps N tokens after the encoder can have a faster LLM
    prefill, and this oracle even projects only N tokens.
``flowcut@576`` (the passthrough row, added unless ``--no-passthrough``)
    the FlowCut classes with nothing to prune (target >= 576): must cost the same as ``stock``.

One *prefill* is what ``generate()`` does for its first step: ``model(input_ids, pixel_values, attention_mask,
use_cache=True, logits_to_keep=1)`` under ``torch.inference_mode()``, image encoding included. It is timed with
``time.perf_counter`` on the CPU, and with CUDA events between ``torch.cuda.synchronize()`` calls on a GPU. Python's
garbage collector is paused during a timed call.

After the timed rounds come passes that are NOT timed as prefills:

* *scoring pass* (each pruning FlowCut row, ``repeats`` runs): FlowCut's scoring and selection, i.e. every call of
  ``compute_layer_signals`` and ``FlowCutSelector.after_layer`` in the model's own modeling module, is timed by
  wrapping those two names in that module for the duration of the pass only (nothing in transformers is patched, and
  the timed rounds run unwrapped). On CUDA each wrapped call is bracketed by synchronisations, so the figure is an
  upper bound there.
* *measurement pass* (one run per row): per-layer sequence lengths seen by the vision encoder layers (forward
  pre-hooks), the KV-cache bytes held by the returned cache, and the peak memory of the prefill: CUDA
  ``max_memory_allocated`` minus the allocation before the call, or on the CPU the growth of the process's peak
  resident set (``VmHWM`` in ``/proc/self/status``, reset through ``/proc/self/clear_refs`` after a ``malloc_trim``;
  where that is not possible, the growth of ``VmRSS``).

The analytic FLOPs (:func:`flowcut_hf.accounting.prefill_account`) are computed from the per-layer token counts that
actually happened in the measurement pass (stock LLaVA runs all 24 CLIP layers, FlowCut stops at the feature layer).

Noise: on a CPU shared with other processes, give torch one thread per core that is really free (``--threads 1`` on
a busy 2-core machine). With more threads than free cores every parallel op waits for a descheduled OpenMP worker,
which inflates small ops (FlowCut's scoring is many small ops) by milliseconds each and makes timings meaningless.
The preset's weights are random, so its CLS attention is nearly uniform and FlowCut's adaptive schedule keeps all
tokens until the final cut; with trained CLIP weights it prunes earlier, and FlowCut's encoder saves more.

JSON schema (``--json FILE``; every figure in the table and more; times in milliseconds, sizes in bytes)::

    {
      "schema_version": 1,
      "tool": "flowcut-hf bench",
      "versions": {"flowcut_hf": str, "torch": str, "transformers": str, "python": str},
      "model": {"spec": str, "class": str, "num_parameters": int,
                "vision": {"layers": int, "hidden": int, "heads": int, "mlp": int, "image_size": int,
                           "patch_size": int},
                "text": {"layers": int, "hidden": int, "heads": int, "kv_heads": int, "mlp": int, "vocab": int},
                "vision_feature_layer": int | list, "vision_feature_select_strategy": str},
      "device": {"type": "cpu" | "cuda", "name": str, "torch_threads": int},
      "dtype": str,
      "settings": {"repeats": int, "warmup": int, "batch_size": int, "prompt": str, "image": str,
                   "num_text_tokens": int, "full_image_tokens": int, "target_nums": [int],
                   "passthrough": bool, "order": "interleaved, rotating", "oracle_selection": "uniform",
                   "timer": "perf_counter" | "cuda_events", "memory_method": str},
      "configs": [{
          "name": str,                       # "stock", "flowcut@64", "oracle@64", "flowcut@576"
          "kind": "stock" | "flowcut" | "oracle",
          "target_num": int | null,          # null for stock
          "passthrough": bool,               # FlowCut with nothing to prune
          "num_image_tokens": int,           # per image, reaching the LLM
          "llm_seq_len": int,                # per prompt
          "prefill_ms": {"median", "mean", "stdev", "min", "max", "q1", "q3", "iqr": float,
                         "samples": [float]},          # in round order
          "speedup_vs_stock": float,         # stock median / this median
          "paired_speedup_vs_stock": float,  # median over rounds of stock / this (same round)
          "flowcut_over_oracle": float | null,         # flowcut rows: this median / oracle@N median
          "paired_flowcut_over_oracle": float | null,  # median over rounds of the same ratio
          "token_schedule": [int],           # measured per vision layer that ran, CLS included
          "reported_token_schedule": [int] | null,     # FlowCut's own FlowCutImageFeaturesOutput.token_schedule
          "kept_per_image": [int] | null,              # len(keep_indices) per image (flowcut rows)
          "analytic": {PrefillAccount.as_dict(): "vision_flops", "projector_flops", "llm_flops", "total_flops",
                       "kv_cache_bytes", "batch_size", "num_images", "token_schedule", "num_image_tokens",
                       "llm_seq_len", "kv_dtype"},
          "flops_ratio_vs_stock": {"vision_flops", "projector_flops", "llm_flops", "kv_cache_bytes",
                                   "total_flops": float},
          "kv_cache": {"measured_bytes": int, "analytic_bytes": int, "match": bool, "cached_tokens": int},
          "peak_memory": {"method": str, "bytes": int, "baseline_bytes": int},
          "scoring": null | {                # pruning FlowCut rows only
              "median_ms": float, "samples_ms": [float],
              "signals_ms": float, "selection_ms": float,   # medians of the two parts
              "calls_per_prefill": {"compute_layer_signals": int, "after_layer": int},
              "fraction_of_prefill": float,  # median scoring / median (un-instrumented) prefill
              "instrumented_prefill_ms": float}
      }],
      "targets": {
          "flowcut_over_oracle_at_64": {"value": float|null, "paired": float|null, "limit": 1.0, "met": bool|null},
          "passthrough_overhead": {"value": float|null, "paired": float|null, "limit": 0.03, "met": bool|null},
          "scoring_fraction_at_64": {"value": float|null, "limit": 0.02, "met": bool|null}
      }
    }

``value`` of ``passthrough_overhead`` is ``flowcut@576 median / stock median - 1``; a target whose rows were not run
has ``value`` and ``met`` null. The targets are measured, not asserted.
"""

from __future__ import annotations

import statistics
import sys
import time
from contextlib import contextmanager
from pathlib import Path
from typing import Callable, Sequence

import torch
from torch import nn

from ... import accounting
from ...modeling.flowcut_compat import cache_of
from ...api import flowcut
from ...benchmark import (
    DEFAULT_PROMPT, SCHEMA_VERSION, BenchRow, DeviceTimer, aligned_rows, cache_nbytes, compact_schedule,
    example_image_path, fmt, model_summary, paired_ratio, percent, ratio, record_vision_schedule, report_headline,
    stats_ms, time_interleaved, uniform_indices, versions_and_device,
)
from ...modeling.configuration_flowcut_llava import FIELD_VALIDATORS, validate_target_num

TARGET_ORACLE_RATIO = 1.0
TARGET_PASSTHROUGH_OVERHEAD = 0.03
TARGET_SCORING_FRACTION = 0.02
TARGET_N = 64


def _flowcut_settings_snapshot(config) -> dict:
    return {name: config.__dict__[name] for name in FIELD_VALIDATORS if name in config.__dict__}


class ModelModes:
    """Switches ONE model instance between the stock classes, FlowCut at N and the oracle at N.

    The weights are shared by construction; only ``__class__`` of this instance (and of its ``.model``) changes, as
    :func:`flowcut_hf.flowcut` itself does. :meth:`restore` puts back the original classes and settings.
    """

    def __init__(self, model: nn.Module, full_tokens: int):
        from ...registry import family_for_model

        family = family_for_model(model)
        self.model = model
        self.full_tokens = full_tokens
        self._original = (type(model), type(model.model), type(model.config), _flowcut_settings_snapshot(model.config))
        if not hasattr(model, "configure_flowcut"):
            flowcut(model, target_num=full_tokens)
        self.flowcut_classes = (type(model), type(model.model))
        self.stock_classes = (family.stock_model_class, family.stock_inner_class)

    def _set_classes(self, classes) -> None:
        self.model.__class__, self.model.model.__class__ = classes

    @contextmanager
    def mode(self, row: BenchRow):
        handle = None
        try:
            if row.kind == "flowcut":
                self._set_classes(self.flowcut_classes)
                self.model.configure_flowcut(target_num=row.target_num, enabled=True)
            else:
                self._set_classes(self.stock_classes)
                if row.kind == "oracle":
                    keep = uniform_indices(self.full_tokens, row.num_image_tokens)
                    handle = self.model.model.multi_modal_projector.register_forward_pre_hook(_oracle_hook(keep))
            yield
        finally:
            if handle is not None:
                handle.remove()
            self._set_classes(self.flowcut_classes)

    def restore(self) -> None:
        model_class, inner_class, config_class, settings = self._original
        self.model.__class__ = model_class
        self.model.model.__class__ = inner_class
        config = self.model.config
        config.__class__ = config_class
        for name in FIELD_VALIDATORS:
            if name in settings:
                setattr(config, name, settings[name])
            else:
                config.__dict__.pop(name, None)


def _oracle_hook(keep: torch.Tensor):
    cache: dict[torch.device, torch.Tensor] = {}

    def pre_hook(_module, args):
        features = args[0]
        index = cache.get(features.device)
        if index is None:
            index = cache[features.device] = keep.to(features.device)
        return (features.index_select(-2, index), *args[1:])

    return pre_hook


@contextmanager
def scoring_timer(model: nn.Module, synchronize: Callable[[], None] = lambda: None):
    """Times FlowCut's scoring (``compute_layer_signals``) and selection (``FlowCutSelector.after_layer``).

    The two names are wrapped in the model's own modeling module (``flowcut_hf.modeling.modeling_flowcut_llava``, or
    the remote-code copy the model was loaded from) for the duration of the block only; the yielded dict accumulates
    ``signals_s``, ``selection_s`` and the call counts. ``synchronize`` is called around each wrapped call (CUDA).
    """
    modeling_module = sys.modules.get(type(model.model).__module__)
    encoder = getattr(modeling_module, "encode_clip_with_flowcut", None)
    module = sys.modules.get(encoder.__module__) if encoder is not None else None
    if module is None or not hasattr(module, "compute_layer_signals") or not hasattr(module, "FlowCutSelector"):
        raise RuntimeError(f"{type(model.model).__name__} has no FlowCut scoring functions to time")
    totals = {"signals_s": 0.0, "selection_s": 0.0, "signals_calls": 0, "selection_calls": 0}
    original_signals = module.compute_layer_signals
    original_selector = module.FlowCutSelector

    def timed_signals(*args, **kwargs):
        synchronize()
        start = time.perf_counter()
        result = original_signals(*args, **kwargs)
        synchronize()
        totals["signals_s"] += time.perf_counter() - start
        totals["signals_calls"] += 1
        return result

    class TimedSelector(original_selector):
        def after_layer(self, *args, **kwargs):
            synchronize()
            start = time.perf_counter()
            result = super().after_layer(*args, **kwargs)
            synchronize()
            totals["selection_s"] += time.perf_counter() - start
            totals["selection_calls"] += 1
            return result

    module.compute_layer_signals = timed_signals
    module.FlowCutSelector = TimedSelector
    try:
        yield totals
    finally:
        module.compute_layer_signals = original_signals
        module.FlowCutSelector = original_selector


def _prompt_ids(tokenizer, prompt: str, image_token_id: int, bos_token_id: int | None, count: int) -> list[int]:
    text = f"USER: <image>\n{prompt} ASSISTANT:"
    prefix, suffix = text.split("<image>")
    prefix_ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
    suffix_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    if bos_token_id is not None and (not prefix_ids or prefix_ids[0] != bos_token_id):
        prefix_ids = [bos_token_id] + prefix_ids
    return prefix_ids + [image_token_id] * count + suffix_ids


def _build_rows(target_nums: Sequence[int], full_tokens: int, passthrough: bool) -> list[BenchRow]:
    rows = [BenchRow("stock", "stock", None, full_tokens)]
    pruned: list[int] = []
    passthrough_target: int | None = None
    for target in target_nums:
        validate_target_num(target)
        if target >= full_tokens:
            passthrough_target = passthrough_target if passthrough_target is not None else target
        elif target not in pruned:
            pruned.append(target)
    if passthrough_target is None and passthrough:
        passthrough_target = full_tokens
    for target in sorted(pruned):
        rows.append(BenchRow(f"flowcut@{target}", "flowcut", target, target))
        rows.append(BenchRow(f"oracle@{target}", "oracle", target, target))
    if passthrough_target is not None:
        rows.append(BenchRow(f"flowcut@{passthrough_target}", "flowcut", passthrough_target, full_tokens, passthrough=True))
    return rows


def run_llava_bench(
    model: nn.Module,
    processor,
    *,
    target_nums: Sequence[int] = (TARGET_N,),
    repeats: int = 5,
    warmup: int = 1,
    batch_size: int = 1,
    prompt: str = DEFAULT_PROMPT,
    image=None,
    passthrough: bool = True,
    scoring_runs: int | None = None,
    progress: bool = True,
    spec: str | None = None,
) -> dict:
    """Runs the benchmark and returns the report (the ``--json`` document, see the module docstring).

    Args:
        model: a loaded LLaVA-1.5 model (stock or FlowCut; it is switched between modes in place and restored at the
            end) with its ``processor``.
        target_nums: the FlowCut / oracle token counts; any value >= 576 is the passthrough row.
        repeats, warmup: timed and untimed interleaved rounds.
        batch_size: prompts per prefill (the same prompt and image repeated).
        prompt: the question; the LLaVA-1.5 template ``USER: <image>\\n{prompt} ASSISTANT:`` is applied.
        image: a PIL image or a path; default the packaged example image.
        passthrough: add the ``flowcut@576`` row (FlowCut with nothing to prune).
        scoring_runs: instrumented runs per pruning FlowCut row (default ``repeats``).
        progress: show a tqdm bar on stderr.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and batch_size >= 1")
    for target in target_nums:
        validate_target_num(target)
    spec = spec or type(model).__name__
    parameter = next(model.parameters())
    dev = DeviceTimer(parameter.device)
    model.eval()

    if image is None:
        image = example_image_path()
    image_label = str(image) if isinstance(image, (str, Path)) else f"<{type(image).__name__}>"
    if isinstance(image, (str, Path)):
        image = Image.open(image)
    image = image.convert("RGB")

    config = model.config
    full_tokens = accounting.full_num_image_tokens(config)
    rows = _build_rows(list(target_nums), full_tokens, passthrough)

    pixel_values = processor.image_processor(images=image, return_tensors="pt")["pixel_values"]
    pixel_values = pixel_values.repeat(batch_size, 1, 1, 1).to(dev.device, parameter.dtype)
    bos = getattr(config.text_config, "bos_token_id", None)
    for row in rows:
        ids = _prompt_ids(processor.tokenizer, prompt, config.image_token_id, bos, row.num_image_tokens)
        input_ids = torch.tensor([ids] * batch_size, device=dev.device)
        row.inputs = {
            "input_ids": input_ids,
            "attention_mask": torch.ones_like(input_ids),
            "pixel_values": pixel_values,
        }
    num_text_tokens = rows[0].inputs["input_ids"].shape[1] - full_tokens

    modes = ModelModes(model, full_tokens)
    scoring_runs = repeats if scoring_runs is None else scoring_runs
    pruning_rows = [r for r in rows if r.kind == "flowcut" and not r.passthrough]
    total = (warmup + repeats) * len(rows) + scoring_runs * len(pruning_rows) + len(rows)
    bar = tqdm(total=total, file=sys.stderr, disable=not progress, desc="bench", unit="prefill", leave=False)

    def prefill(row: BenchRow):
        return model(**row.inputs, use_cache=True, logits_to_keep=1)

    try:
        with torch.inference_mode():
            time_interleaved(rows, modes.mode, dev, prefill, warmup, repeats, bar)
            # Scoring and selection, instrumented, kept out of the timed rounds.
            for _ in range(scoring_runs):
                for row in pruning_rows:
                    bar.set_postfix_str(f"{row.name} scoring", refresh=False)
                    with modes.mode(row), scoring_timer(model, dev.synchronize) as totals:
                        seconds, output = dev.time_call(lambda: prefill(row))
                    del output
                    row.scoring.append(dict(totals))
                    row.instrumented.append(seconds)
                    bar.update()
            # Measurement pass: schedule, KV cache, peak memory, FlowCut's own report.
            for row in rows:
                bar.set_postfix_str(f"{row.name} memory", refresh=False)
                with modes.mode(row):
                    with record_vision_schedule(model) as lengths:
                        memory, output = dev.peak_memory(lambda: prefill(row))
                    kv_bytes, cached = cache_nbytes(cache_of(output))
                    del output
                    row.measured = {"schedule": list(lengths), "memory": memory, "kv_bytes": kv_bytes, "cached": cached}
                    if row.kind == "flowcut":
                        features = model.model.get_image_features(pixel_values=row.inputs["pixel_values"])
                        row.measured["reported_schedule"] = [int(n) for n in features.token_schedule]
                        row.measured["kept"] = [int(k.numel()) for k in features.keep_indices]
                        del features
                bar.update()
    finally:
        bar.close()
        modes.restore()

    return _report(
        spec=spec,
        model=model,
        rows=rows,
        dev=dev,
        dtype=parameter.dtype,
        settings={
            "repeats": repeats,
            "warmup": warmup,
            "batch_size": batch_size,
            "prompt": prompt,
            "image": image_label,
            "num_text_tokens": int(num_text_tokens),
            "full_image_tokens": full_tokens,
            "target_nums": [int(t) for t in target_nums],
            "passthrough": passthrough,
            "order": "interleaved, rotating",
            "oracle_selection": "uniform",
            "timer": "cuda_events" if dev.cuda else "perf_counter",
            "memory_method": rows[0].measured["memory"]["method"],
        },
    )


def _report(*, spec, model, rows, dev, dtype, settings) -> dict:
    config = model.config
    batch_size = settings["batch_size"]
    num_text_tokens = settings["num_text_tokens"]
    by_name = {row.name: row for row in rows}
    stock = by_name["stock"]
    stock_stats = stats_ms(stock.samples)
    dtype_name = str(dtype).removeprefix("torch.")

    accounts = {
        row.name: accounting.prefill_account(
            config,
            num_text_tokens,
            token_schedule=row.measured["schedule"],
            num_image_tokens=row.num_image_tokens,
            batch_size=batch_size,
            kv_dtype=dtype,
        )
        for row in rows
    }
    stock_account = accounts["stock"]
    configs = []
    for row in rows:
        stats = stats_ms(row.samples)
        account = accounts[row.name]
        oracle = by_name.get(f"oracle@{row.target_num}") if row.kind == "flowcut" else None
        scoring = None
        if row.scoring:
            per_run = [(s["signals_s"] + s["selection_s"]) for s in row.scoring]
            median_scoring = statistics.median(per_run) * 1e3
            scoring = {
                "median_ms": median_scoring,
                "samples_ms": [t * 1e3 for t in per_run],
                "signals_ms": statistics.median(s["signals_s"] for s in row.scoring) * 1e3,
                "selection_ms": statistics.median(s["selection_s"] for s in row.scoring) * 1e3,
                "calls_per_prefill": {
                    "compute_layer_signals": row.scoring[-1]["signals_calls"],
                    "after_layer": row.scoring[-1]["selection_calls"],
                },
                "fraction_of_prefill": ratio(median_scoring, stats["median"]),
                "instrumented_prefill_ms": statistics.median(row.instrumented) * 1e3,
            }
        configs.append(
            {
                "name": row.name,
                "kind": row.kind,
                "target_num": row.target_num,
                "passthrough": row.passthrough,
                "num_image_tokens": row.num_image_tokens,
                "llm_seq_len": int(row.inputs["input_ids"].shape[1]),
                "prefill_ms": stats,
                "speedup_vs_stock": ratio(stock_stats["median"], stats["median"]),
                "paired_speedup_vs_stock": paired_ratio(stock.samples, row.samples),
                "flowcut_over_oracle": ratio(stats["median"], stats_ms(oracle.samples)["median"]) if oracle else None,
                "paired_flowcut_over_oracle": paired_ratio(row.samples, oracle.samples) if oracle else None,
                "token_schedule": row.measured["schedule"],
                "reported_token_schedule": row.measured.get("reported_schedule"),
                "kept_per_image": row.measured.get("kept"),
                "analytic": account.as_dict(),
                "flops_ratio_vs_stock": account.ratio_to(stock_account),
                "kv_cache": {
                    "measured_bytes": row.measured["kv_bytes"],
                    "analytic_bytes": account.kv_cache_bytes,
                    "match": row.measured["kv_bytes"] == account.kv_cache_bytes,
                    "cached_tokens": row.measured["cached"],
                },
                "peak_memory": row.measured["memory"],
                "scoring": scoring,
            }
        )

    named = {c["name"]: c for c in configs}
    at64 = named.get(f"flowcut@{TARGET_N}")
    through = next((c for c in configs if c["passthrough"]), None)

    def target(value, limit, paired=None, include_paired=True):
        entry = {"value": value, "limit": limit, "met": None if value is None else bool(value <= limit)}
        if include_paired:
            entry["paired"] = paired
        return entry

    overhead = None if through is None else through["prefill_ms"]["median"] / stock_stats["median"] - 1
    paired_overhead = None
    if through is not None:
        paired = paired_ratio(by_name[through["name"]].samples, stock.samples)
        paired_overhead = None if paired is None else paired - 1
    targets = {
        "flowcut_over_oracle_at_64": target(
            at64["flowcut_over_oracle"] if at64 else None,
            TARGET_ORACLE_RATIO,
            at64["paired_flowcut_over_oracle"] if at64 else None,
        ),
        "passthrough_overhead": target(overhead, TARGET_PASSTHROUGH_OVERHEAD, paired_overhead),
        "scoring_fraction_at_64": target(
            at64["scoring"]["fraction_of_prefill"] if at64 and at64["scoring"] else None,
            TARGET_SCORING_FRACTION,
            include_paired=False,
        ),
    }
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "flowcut-hf bench",
        "family": "llava",
        **versions_and_device(dev),
        "model": model_summary(spec, model),
        "dtype": dtype_name,
        "settings": settings,
        "configs": configs,
        "targets": targets,
    }


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #


def format_table(report: dict) -> str:
    """The human-readable table (what the CLI prints) for a report from :func:`run_bench`."""
    settings = report["settings"]
    mib = 1024**2
    header = (
        "config", "img tok", "LLM seq", "median ms", "IQR ms", "min-max ms", "speed-up", "/oracle",
        "vis GFLOP", "LLM GFLOP", "KV MiB", "peak MiB", "scoring ms (%)",
    )
    lines_data = []
    for c in report["configs"]:
        p = c["prefill_ms"]
        scoring = c["scoring"]
        lines_data.append((
            c["name"],
            str(c["num_image_tokens"]),
            str(c["llm_seq_len"]),
            fmt(p["median"], ".1f"),
            fmt(p["iqr"], ".1f"),
            f"{fmt(p['min'], '.0f')}-{fmt(p['max'], '.0f')}",
            fmt(c["speedup_vs_stock"], ".2f") + "x",
            fmt(c["flowcut_over_oracle"], ".3f"),
            fmt(c["analytic"]["vision_flops"] / 1e9, ".1f"),
            fmt(c["analytic"]["llm_flops"] / 1e9, ".1f"),
            fmt(c["kv_cache"]["measured_bytes"] / mib, ".2f"),
            fmt(c["peak_memory"]["bytes"] / mib, ".1f"),
            "-" if scoring is None else f"{scoring['median_ms']:.2f} ({100 * scoring['fraction_of_prefill']:.2f}%)",
        ))
    table, name_width = aligned_rows(header, lines_data)
    out = [
        report_headline(report),
        f"prefill = image encoding + LLM over the prompt ({settings['num_text_tokens']} text tokens + image tokens), "
        f"use_cache=True, logits_to_keep=1; batch {settings['batch_size']}; {settings['repeats']} timed rounds after "
        f"{settings['warmup']} warm-up, configurations interleaved",
        "",
        *table,
        "",
        "vision-encoder tokens per layer that ran (CLS included):",
    ]
    for c in report["configs"]:
        out.append(f"  {c['name']:<{name_width}}  {compact_schedule(c['token_schedule'])}")
    kv_ok = all(c["kv_cache"]["match"] for c in report["configs"])
    out.append(
        f"KV cache: measured from the returned cache, {'equal to' if kv_ok else 'DIFFERENT from'} the analytic count "
        f"for every row. Peak memory: {report['settings']['memory_method']}."
    )
    out.append("")
    out.append("targets (measured, not asserted):")
    t = report["targets"]

    def verdict(entry):
        return "n/a (row not run)" if entry["met"] is None else ("met" if entry["met"] else "MISSED")

    o = t["flowcut_over_oracle_at_64"]
    out.append(
        f"  FlowCut@64 / oracle@64 prefill      {fmt(o['value'], '.3f')} (paired {fmt(o['paired'], '.3f')}), "
        f"limit <= {o['limit']:.2f}: {verdict(o)}"
    )
    p = t["passthrough_overhead"]
    out.append(
        f"  nothing pruned vs stock             {percent(p['value'], '+.2f')} (paired {percent(p['paired'], '+.2f')}), "
        f"limit <= +{100 * p['limit']:.0f}%: {verdict(p)}"
    )
    s = t["scoring_fraction_at_64"]
    out.append(
        f"  scoring+selection / FlowCut@64      {percent(s['value'], '.2f')}, "
        f"limit <= {100 * s['limit']:.0f}%: {verdict(s)}"
    )
    return "\n".join(out)
