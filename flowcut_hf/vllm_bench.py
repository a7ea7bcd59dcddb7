"""The measuring toolkit of ``flowcut-hf bench --engine vllm``: requests per second and time to first token of
several checkpoints served by vLLM on the same engine settings, interleaved.

A family that vLLM serves pruned writes the checkpoints (:meth:`flowcut_hf.family.FlowCutFamily.vllm_bench_plan`):
the stock model, its FlowCut variant at each amount and an oracle at the same amount (the stock vision tower, then
only N evenly spaced tokens per image into the language model). This module starts one vLLM engine per checkpoint,
all alive at once and idle but for the one being timed, and in every round sends each engine the same batch of image
requests, in a rotating order. vLLM's prefix cache and multimodal caches are off, so every round encodes every image
and prefills every prompt.

Where the time of a request goes is read from vLLM's own per-request timestamps: ``ttft`` (arrival to first token),
``prefill`` (scheduled to first token: the vision encoder, the projector and the prompt's prefill, batched with the
other requests), ``queue`` (queued to scheduled) and ``decode`` (first to last token); what TTFT has beyond queue and
prefill is the ``intake``: the image processor, tokenising, handing the request to the engine, and waiting there for
the engine step in progress to end.
"""

from __future__ import annotations

import os
import statistics
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from .accounting import kv_cache_bytes

SCHEMA_VERSION = 1


@dataclass
class VllmBenchRow:
    """One checkpoint the bench serves."""

    name: str
    """``stock``, ``flowcut@64``, ``oracle@64``."""
    kind: str
    target_num: int | None
    folder: Path
    rps: list[float] = field(default_factory=list)
    ttft: list[float] = field(default_factory=list)
    parts: dict[str, list[float]] = field(default_factory=dict)
    prompt_tokens: int | None = None
    kv_bytes: int | None = None
    """The KV cache one request holds after its prompt, in the engine's dtype."""


@dataclass
class VllmBenchPlan:
    """What a family gives the bench: its checkpoints, the requests (vLLM's prompt dicts) and a description of both."""

    rows: list[VllmBenchRow]
    requests: list[dict[str, Any]]
    model: dict[str, Any]
    text_config: Any = None
    """The language model's config, for the KV cache a request holds (:func:`flowcut_hf.accounting.kv_cache_bytes`)."""


@dataclass
class VllmBenchOptions:
    target_nums: Sequence[int] = (64,)
    requests: int = 8
    repeats: int = 3
    warmup: int = 1
    max_tokens: int = 16
    dtype: str = "auto"
    max_model_len: int = 2048
    kv_cache_gib: int = 2
    progress: bool = True


def engine_arguments(options: VllmBenchOptions) -> dict[str, Any]:
    """The settings every engine of one bench shares."""
    return dict(
        max_model_len=options.max_model_len, dtype=options.dtype, enforce_eager=True, seed=0,
        enable_prefix_caching=False, mm_processor_cache_gb=0, disable_log_stats=False,
        limit_mm_per_prompt={"image": 1}, max_num_seqs=max(options.requests, 1),
    )


def request_parts(output) -> dict[str, float] | None:
    """Where one finished request's time went, in seconds, from vLLM's per-request stats (None where it keeps none)."""
    stats = getattr(output, "metrics", None)
    if stats is None or not getattr(stats, "first_token_ts", 0):
        return None
    prefill = stats.first_token_ts - stats.scheduled_ts
    queue = stats.scheduled_ts - stats.queued_ts
    return {
        "ttft": stats.first_token_latency,
        "intake": max(stats.first_token_latency - prefill - queue, 0.0),
        "queue": queue,
        "prefill": prefill,
        "decode": stats.last_token_ts - stats.first_token_ts,
    }


def run_vllm_bench(plan: VllmBenchPlan, options: VllmBenchOptions, log: Callable[[str], None] = print) -> dict:
    """Serves every row of ``plan`` and times them interleaved; returns the report (the ``--json`` document)."""
    os.environ.setdefault("VLLM_CPU_KVCACHE_SPACE", str(options.kv_cache_gib))
    # vLLM logs to stdout, where the table goes; its errors still show (on stderr), set either variable to see more.
    os.environ.setdefault("VLLM_LOGGING_LEVEL", "ERROR")
    os.environ.setdefault("VLLM_LOGGING_STREAM", "ext://sys.stderr")
    import vllm
    from vllm import LLM, SamplingParams

    sampling = SamplingParams(max_tokens=options.max_tokens, temperature=0, ignore_eos=True)
    engines = {}
    for row in plan.rows:
        log(f"starting vLLM for {row.name} ({row.folder})")
        engines[row.name] = LLM(model=str(row.folder), **engine_arguments(options))
    rounds = options.warmup + options.repeats
    for index in range(rounds):
        order = plan.rows[index % len(plan.rows):] + plan.rows[: index % len(plan.rows)]
        for row in order:
            start = time.perf_counter()
            outputs = engines[row.name].generate(plan.requests, sampling, use_tqdm=False)
            elapsed = time.perf_counter() - start
            row.prompt_tokens = len(outputs[0].prompt_token_ids)
            if plan.text_config is not None:
                dtype = engines[row.name].llm_engine.model_config.dtype
                row.kv_bytes = kv_cache_bytes(plan.text_config, row.prompt_tokens, dtype=dtype)
            if index < options.warmup:
                continue
            row.rps.append(len(plan.requests) / elapsed)
            parts = [p for p in map(request_parts, outputs) if p is not None]
            if parts:
                row.ttft.append(statistics.median(p["ttft"] for p in parts))
                for name in parts[0]:
                    row.parts.setdefault(name, []).append(statistics.median(p[name] for p in parts))
        if options.progress:
            log(f"round {index + 1}/{rounds}{' (warm-up)' if index < options.warmup else ''} done")
    return build_report(plan, options, vllm.__version__)


def build_report(plan: VllmBenchPlan, options: VllmBenchOptions, vllm_version: str) -> dict:
    by_name = {row.name: row for row in plan.rows}
    stock = by_name.get("stock")

    def median(values):
        return statistics.median(values) if values else None

    rows = []
    for row in plan.rows:
        oracle = by_name.get(f"oracle@{row.target_num}") if row.kind == "flowcut" else None
        rps = median(row.rps)
        rows.append({
            "name": row.name, "kind": row.kind, "target_num": row.target_num, "prompt_tokens": row.prompt_tokens,
            "kv_mib_per_request": row.kv_bytes / 2**20 if row.kv_bytes is not None else None,
            "requests_per_s": rps, "rps_samples": row.rps,
            "ttft_ms": median(row.ttft) * 1e3 if row.ttft else None,
            "parts_ms": {name: median(values) * 1e3 for name, values in row.parts.items()},
            "throughput_over_stock": rps / median(stock.rps) if stock and rps and stock.rps else None,
            "throughput_over_oracle": rps / median(oracle.rps) if oracle and rps and oracle.rps else None,
        })
    at_64 = next((r for r in rows if r["kind"] == "flowcut" and r["target_num"] == 64), None)
    value = at_64["throughput_over_oracle"] if at_64 else None
    return {
        "schema_version": SCHEMA_VERSION,
        "engine": "vllm",
        "vllm_version": vllm_version,
        "model": plan.model,
        "settings": {
            "requests": len(plan.requests), "max_tokens": options.max_tokens, "repeats": options.repeats,
            "warmup": options.warmup, "dtype": options.dtype, "order": "interleaved, rotating",
            "engine": engine_arguments(options),
        },
        "rows": rows,
        "targets": {
            "flowcut64_throughput_over_oracle64": {
                "value": value, "limit": 1.0, "met": None if value is None else value >= 1.0,
            },
        },
    }


def format_vllm_table(report: dict) -> str:
    """The table ``flowcut-hf bench --engine vllm`` prints."""
    header = ("row", "prompt tokens", "KV MiB/req", "requests/s", "x stock", "TTFT ms", "intake", "queue", "prefill", "decode")
    lines = []
    for row in report["rows"]:
        parts = row["parts_ms"]
        lines.append((
            row["name"], str(row["prompt_tokens"]),
            f"{row['kv_mib_per_request']:.1f}" if row["kv_mib_per_request"] is not None else "-",
            f"{row['requests_per_s']:.2f}",
            f"{row['throughput_over_stock']:.2f}" if row["throughput_over_stock"] else "-",
            f"{row['ttft_ms']:.0f}" if row["ttft_ms"] is not None else "-",
            *(f"{parts[name]:.0f}" if name in parts else "-" for name in ("intake", "queue", "prefill", "decode")),
        ))
    widths = [max(len(h), *(len(line[i]) for line in lines)) for i, h in enumerate(header)]
    table = [" | ".join(h.ljust(w) for h, w in zip(header, widths)), "-+-".join("-" * w for w in widths)]
    table += [" | ".join(c.ljust(w) for c, w in zip(line, widths)) for line in lines]
    settings = report["settings"]
    table.append("")
    table.append(
        f"vLLM {report['vllm_version']}, {report['model']['description']}; {settings['requests']} image requests per "
        f"round, {settings['max_tokens']} new tokens each, {settings['repeats']} timed rounds after {settings['warmup']} "
        "warm-up, engines interleaved; medians. TTFT parts (ms, median request): intake = image processing, "
        "tokenising, hand-over and waiting for the engine step in progress; prefill = vision encoder + projector + "
        "prompt prefill, batched; decode follows the first token."
    )
    target = report["targets"]["flowcut64_throughput_over_oracle64"]
    if target["value"] is not None:
        table.append(
            f"target: flowcut@64 no slower than oracle@64: {target['value']:.2f}x the oracle's requests/s "
            f"({'met' if target['met'] else 'NOT met'})"
        )
    return "\n".join(table)


__all__ = [
    "VllmBenchOptions", "VllmBenchPlan", "VllmBenchRow", "build_report", "engine_arguments", "format_vllm_table",
    "request_parts", "run_vllm_bench",
]
