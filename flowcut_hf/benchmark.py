"""The measuring toolkit of ``flowcut-hf bench``: timing interleaved configurations of one model instance, peak
memory, the KV cache a prefill leaves, statistics and the aligned tables. Each family's bench rows
(:meth:`flowcut_hf.family.FlowCutFamily.run_bench`, in ``flowcut_hf/families/*/bench.py``) are built from these; nothing
here knows a family.

Noise: on a CPU shared with other processes, give torch one thread per core that is really free (``--threads``);
timings are compared as ratios of configurations measured in one run, never as absolute values.
"""

from __future__ import annotations

import ctypes
import gc
import math
import platform
import statistics
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from .modeling.flowcut_compat import cache_of

DEFAULT_PROMPT = "What is shown in this image? Answer in one sentence."
SCHEMA_VERSION = 1


@dataclass
class BenchOptions:
    """What ``flowcut-hf bench`` was asked for; each family uses what applies to it (and says so when an option does
    not apply)."""

    target_nums: Sequence[int] = ()
    retain_ratios: Sequence[float] = ()
    repeats: int = 5
    warmup: int = 1
    batch_size: int = 1
    prompt: str = DEFAULT_PROMPT
    image: Any = None
    """A PIL image or a path; each family's default example otherwise."""
    passthrough: bool = True
    scoring_runs: int | None = None
    attn_implementation: str | None = None
    progress: bool = True
    spec: str | None = None
    """How the report names the model (``builtin (FAMILY)``, a folder, a repo id)."""


def example_image_path() -> Path:
    """The example picture shipped in the package (``flowcut_hf/assets/example.png``)."""
    return Path(__file__).resolve().parent / "assets" / "example.png"


def open_image(image):
    """An RGB PIL image from a path or a PIL image."""
    from PIL import Image

    return (Image.open(image) if isinstance(image, (str, Path)) else image).convert("RGB")


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return device


DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # Random preset weights stay finite in bf16; fp16 ranges are what real LLaVA checkpoints are tuned for, but
        # bf16 runs at the same speed on current GPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype must be one of auto, {', '.join(DTYPES)}; got {dtype!r}") from None


@dataclass
class BenchRow:
    name: str
    kind: str  # stock | flowcut | oracle
    target_num: int | None
    num_image_tokens: int
    passthrough: bool = False
    inputs: dict = field(default_factory=dict)
    samples: list[float] = field(default_factory=list)
    scoring: list[dict] = field(default_factory=list)
    instrumented: list[float] = field(default_factory=list)
    measured: dict = field(default_factory=dict)


def versions_and_device(timer: DeviceTimer) -> dict:
    """The ``versions`` and ``device`` entries every bench report states."""
    import transformers

    from . import __version__

    cuda_name = torch.cuda.get_device_name(timer.device) if timer.cuda else None
    return {
        "versions": {
            "flowcut_hf": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
        "device": {
            "type": timer.device.type,
            "name": cuda_name or platform.processor() or platform.machine(),
            "torch_threads": torch.get_num_threads(),
        },
    }


def instance_snapshot(model: nn.Module) -> tuple:
    """What per-instance class swaps change on ``model``: its classes, its inner model's and config's, the config."""
    return type(model), type(model.model), type(model.config), dict(model.config.__dict__)


def restore_instance(model: nn.Module, snapshot: tuple) -> None:
    """Puts ``model`` back as :func:`instance_snapshot` saw it."""
    model_class, inner_class, config_class, settings = snapshot
    model.__class__, model.model.__class__, model.config.__class__ = model_class, inner_class, config_class
    model.config.__dict__.clear()
    model.config.__dict__.update(settings)


def with_placeholder_span(inputs: dict, image_token_id: int, placeholders: int) -> dict:
    """``inputs`` of one prompt with one image, its placeholder span resized to ``placeholders`` (an oracle's count)."""
    ids = inputs["input_ids"][0]
    is_image = ids == image_token_id
    first = int(is_image.nonzero()[0])
    ids = torch.cat([ids[:first], torch.full((placeholders,), image_token_id), ids[first + int(is_image.sum()) :]])
    return {**inputs, "input_ids": ids[None], "attention_mask": torch.ones_like(ids[None])}


class UniformOracleMixin:
    """For an inner model whose ``get_image_features`` gives per-image packed features: each image's features thinned
    to ``oracle_tokens`` evenly spaced ones after the full vision tower (the benches' oracle; set on the instance)."""

    oracle_tokens: int = 0

    def get_image_features(self, *args, **kwargs):
        output = super().get_image_features(*args, **kwargs)
        output.pooler_output = [
            features[uniform_indices(len(features), self.oracle_tokens).to(features.device)]
            for features in output.pooler_output
        ]
        return output


def uniform_indices(total: int, keep: int) -> torch.Tensor:
    """``keep`` distinct, evenly spaced indices in ``range(total)``, ascending (the oracle's selection)."""
    if not 1 <= keep <= total:
        raise ValueError(f"cannot keep {keep} of {total}")
    return torch.linspace(0, total - 1, keep).round().long()


def vision_layers(model: nn.Module) -> Sequence[nn.Module]:
    tower = model.model.vision_tower
    vision_model = getattr(tower, "vision_model", tower)
    return vision_model.encoder.layers


@contextmanager
def record_vision_schedule(model: nn.Module):
    """Records the sequence length each vision-encoder layer is called with."""
    lengths: list[int] = []

    def hook(_module, args, kwargs):
        hidden = args[0] if args else kwargs["hidden_states"]
        lengths.append(int(hidden.shape[1]))

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in vision_layers(model)]
    try:
        yield lengths
    finally:
        for handle in handles:
            handle.remove()


def _proc_status_kib(field_name: str) -> int | None:
    try:
        with open("/proc/self/status") as status:
            for line in status:
                if line.startswith(field_name + ":"):
                    return int(line.split()[1])
    except OSError:
        return None
    return None


def _malloc_trim() -> None:
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass


def _reset_peak_rss() -> bool:
    try:
        with open("/proc/self/clear_refs", "w") as clear_refs:
            clear_refs.write("5")
        return True
    except OSError:
        return False


class DeviceTimer:
    def __init__(self, device: torch.device):
        self.device = device
        self.cuda = device.type == "cuda"

    def synchronize(self) -> None:
        if self.cuda:
            torch.cuda.synchronize(self.device)

    def time_call(self, fn: Callable[[], Any]) -> tuple[float, Any]:
        """Seconds ``fn`` took, and its result."""
        gc_was_enabled = gc.isenabled()
        gc.disable()
        try:
            if self.cuda:
                start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
                torch.cuda.synchronize(self.device)
                start.record()
                result = fn()
                end.record()
                torch.cuda.synchronize(self.device)
                return start.elapsed_time(end) / 1e3, result
            start_time = time.perf_counter()
            result = fn()
            return time.perf_counter() - start_time, result
        finally:
            if gc_was_enabled:
                gc.enable()

    def peak_memory(self, fn: Callable[[], Any]) -> tuple[dict, Any]:
        gc.collect()
        if self.cuda:
            torch.cuda.synchronize(self.device)
            torch.cuda.empty_cache()
            torch.cuda.reset_peak_memory_stats(self.device)
            baseline = torch.cuda.memory_allocated(self.device)
            result = fn()
            torch.cuda.synchronize(self.device)
            peak = torch.cuda.max_memory_allocated(self.device)
            return {"method": "cuda_max_memory_allocated", "bytes": int(peak - baseline), "baseline_bytes": baseline}, result
        _malloc_trim()
        has_peak = _reset_peak_rss()
        baseline = (_proc_status_kib("VmRSS") or 0) * 1024
        result = fn()
        if has_peak:
            after = (_proc_status_kib("VmHWM") or 0) * 1024
            method = "rss_peak_growth"
        else:
            after = (_proc_status_kib("VmRSS") or 0) * 1024
            method = "rss_growth"
        return {"method": method, "bytes": int(max(after - baseline, 0)), "baseline_bytes": baseline}, result


def cache_nbytes(cache) -> tuple[int, int]:
    """``(bytes, cached tokens)`` of the key/value tensors a transformers cache holds."""
    total, tokens = 0, 0
    layers = getattr(cache, "layers", None)
    if layers is not None:
        pairs = [(getattr(layer, "keys", None), getattr(layer, "values", None)) for layer in layers]
    else:  # legacy tuple-of-tuples
        pairs = [(layer[0], layer[1]) for layer in cache]
    for keys, values in pairs:
        for tensor in (keys, values):
            if isinstance(tensor, torch.Tensor):
                total += tensor.numel() * tensor.element_size()
        if isinstance(keys, torch.Tensor) and keys.dim() >= 2:
            tokens = max(tokens, int(keys.shape[-2]))
    return total, tokens


def stats_ms(samples_s: Sequence[float]) -> dict:
    samples = [s * 1e3 for s in samples_s]
    if not samples:
        return {k: None for k in ("median", "mean", "stdev", "min", "max", "q1", "q3", "iqr")} | {"samples": []}
    if len(samples) >= 2:
        q1, _, q3 = statistics.quantiles(samples, n=4, method="inclusive")
        stdev = statistics.stdev(samples)
    else:
        q1 = q3 = samples[0]
        stdev = 0.0
    return {
        "median": statistics.median(samples),
        "mean": statistics.fmean(samples),
        "stdev": stdev,
        "min": min(samples),
        "max": max(samples),
        "q1": q1,
        "q3": q3,
        "iqr": q3 - q1,
        "samples": samples,
    }


def paired_ratio(numerator: Sequence[float], denominator: Sequence[float]) -> float | None:
    ratios = [a / b for a, b in zip(numerator, denominator) if b > 0]
    return statistics.median(ratios) if ratios else None


def ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


def time_interleaved(rows, mode, timer: DeviceTimer, prefill, warmup: int, repeats: int, bar) -> None:
    """Times ``prefill(row)`` for every row, round after round, appending seconds to ``row.samples``.

    The order rotates by one row every round, so drift in machine load hits every row alike; the first ``warmup``
    rounds are not recorded. ``mode(row)`` is the context that puts the model in the row's configuration.
    """
    for round_index in range(warmup + repeats):
        shift = round_index % len(rows)
        for row in rows[shift:] + rows[:shift]:
            bar.set_postfix_str(row.name, refresh=False)
            with mode(row):
                seconds, output = timer.time_call(lambda: prefill(row))
            del output
            if round_index >= warmup:
                row.samples.append(seconds)
            bar.update()


@dataclass
class BenchSetup:
    """What a family's bench starts from: the model in eval mode, its processor, a parameter (device, dtype), the
    timer and the RGB image."""

    model: nn.Module
    processor: Any
    parameter: torch.Tensor
    timer: DeviceTimer
    image: Any


def bench_setup(model, processor, builtin: str, repeats: int, warmup: int, image, image_size: tuple[int, int]) -> BenchSetup:
    """The start every two-stage family's bench shares: checks the rounds, builds the family's ``builtin`` model when
    none is given (a given model needs its processor), and takes ``image`` or a synthetic one of ``image_size``."""
    from .tiny import synthetic_image

    if repeats < 1 or warmup < 0:
        raise ValueError("need repeats >= 1 and warmup >= 0")
    if model is None:
        from .builtin import build_builtin_model

        model, processor = build_builtin_model(builtin)
    elif processor is None:
        raise ValueError("pass the model's processor along with a loaded model")
    model.eval()
    parameter = next(model.parameters())
    picture = (image or synthetic_image(0, size=image_size)).convert("RGB")
    return BenchSetup(model, processor, parameter, DeviceTimer(parameter.device), picture)


def bench_progress(total: int, progress: bool):
    """The bench's tqdm bar on stderr (silent unless ``progress``)."""
    import sys

    from tqdm.auto import tqdm

    return tqdm(total=total, file=sys.stderr, disable=not progress, desc="bench", unit="prefill", leave=False)


def measure_prefill(timer: DeviceTimer, prefill: Callable[[], Any]) -> tuple[dict, Any]:
    """Runs ``prefill`` once under the peak-memory probe: ``({"memory", "kv_bytes", "layer_lengths"}, output)``, the
    KV length of every layer read from the returned cache."""
    memory, output = timer.peak_memory(prefill)
    cache = cache_of(output)
    kv_bytes, _ = cache_nbytes(cache)
    return {"memory": memory, "kv_bytes": kv_bytes, "layer_lengths": [int(layer.keys.shape[2]) for layer in cache.layers]}, output


def time_and_measure_rows(rows, modes, timer: DeviceTimer, prefill, warmup: int, repeats: int, progress: bool, measure) -> None:
    """The two passes of a two-stage family's bench: every row's prefill timed in interleaved rounds
    (:func:`time_interleaved`), then each row measured once, ``row.measured = measure(row)``, inside its mode
    (``modes.mode(row)``); the model is restored (``modes.restore()``) whatever happens."""
    bar = bench_progress((warmup + repeats + 1) * len(rows), progress)
    try:
        with torch.inference_mode():
            time_interleaved(rows, modes.mode, timer, prefill, warmup, repeats, bar)
            for row in rows:
                bar.set_postfix_str(f"{row.name} memory", refresh=False)
                with modes.mode(row):
                    row.measured = measure(row)
                bar.update()
    finally:
        bar.close()
        modes.restore()


def model_summary(spec: str, model: nn.Module) -> dict:
    config = model.config
    vision, text = config.vision_config, config.text_config
    return {
        "spec": spec,
        "class": type(model).__name__,
        "num_parameters": int(sum(p.numel() for p in model.parameters())),
        "vision": {
            "layers": vision.num_hidden_layers,
            "hidden": vision.hidden_size,
            "heads": vision.num_attention_heads,
            "mlp": vision.intermediate_size,
            "image_size": vision.image_size,
            "patch_size": vision.patch_size,
        },
        "text": {
            "layers": text.num_hidden_layers,
            "hidden": text.hidden_size,
            "heads": text.num_attention_heads,
            "kv_heads": getattr(text, "num_key_value_heads", None) or text.num_attention_heads,
            "mlp": text.intermediate_size,
            "vocab": text.vocab_size,
        },
        "vision_feature_layer": config.vision_feature_layer,
        "vision_feature_select_strategy": config.vision_feature_select_strategy,
    }


def compact_schedule(schedule: Sequence[int]) -> str:
    parts, previous, count = [], None, 0
    for n in list(schedule) + [None]:
        if n == previous:
            count += 1
            continue
        if previous is not None:
            parts.append(f"{previous}x{count}" if count > 1 else str(previous))
        previous, count = n, 1
    return " ".join(parts)


def fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def percent(value, spec: str) -> str:
    return "-" if value is None else format(100 * value, spec) + "%"


def aligned_rows(header: Sequence[str], rows: Sequence[Sequence[str]]) -> tuple[list[str], int]:
    """The header, a rule and the rows as aligned text lines (first column left, the others right), and the width of
    the first column."""
    widths = [max(len(h), *(len(r[i]) for r in rows)) for i, h in enumerate(header)]

    def line(cells):
        return "  ".join(cell.ljust(w) if i == 0 else cell.rjust(w) for i, (cell, w) in enumerate(zip(cells, widths)))

    return [line(header), line(["-" * w for w in widths]), *(line(r) for r in rows)], widths[0]


def staged_target_lines(targets: dict, label: str, speed_key: str, oracle_key: str) -> list[str]:
    """The closing lines of the LLaVA-NeXT and Qwen tables: the KV-cache check and the two measured targets of the
    headline row ``label`` (e.g. ``FlowCut@160``, ``FlowCut@0.111``)."""
    kv, speed, oracle = targets["kv_cache_matches_analytic"], targets[speed_key], targets[oracle_key]

    def verdict(entry):
        return "n/a (row not run)" if entry["met"] is None else ("met" if entry["met"] else "MISSED")

    def number(value):
        return "-" if value is None else f"{value:.2f}"

    oracle_label = label.replace("FlowCut", "oracle")
    return [
        "KV cache: measured from the returned cache (every layer's own length), "
        f"{'equal to' if kv['met'] else 'DIFFERENT from'} the analytic count for every row.",
        "",
        "targets (measured, not asserted):",
        f"  {label} speed-up vs stock{' ' * (len(oracle_label) - 4)}{number(speed['value'])}x (paired "
        f"{number(speed['paired'])}x), limit >= {speed['limit']:.1f}x: {verdict(speed)}",
        f"  {label} / {oracle_label} prefill   {number(oracle['value'])} (paired {number(oracle['paired'])}), "
        f"limit <= {oracle['limit']:.2f}: {verdict(oracle)}",
    ]


def report_headline(report: dict) -> str:
    """The first line of a bench table: the model, its size and geometry, the device and the dtype."""
    model = report["model"]
    vision, text = model["vision"], model["text"]
    params = model["num_parameters"] / 1e6
    threads = report["device"]["torch_threads"]
    return (
        f"flowcut-hf bench: {model['spec']} ({params:.{0 if params >= 10 else 2}f}M params; CLIP {vision['layers']}L "
        f"d{vision['hidden']}, LLM {text['layers']}L d{text['hidden']}) on {report['device']['type']} "
        f"({report['device']['name']}, {threads} torch thread{'s' if threads != 1 else ''}), {report['dtype']}"
    )


# --- the demo's measurements: one model, pruning switched off and on, alternating


def time_prefill(model, inputs, repeats: int) -> list[float]:
    timings = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs, use_cache=True, logits_to_keep=1)
            timings.append(time.perf_counter() - start)
    return timings


def interleaved_prefill_medians(model, stock_inputs, inputs, repeats: int) -> tuple[float, float]:
    """Median prefill seconds with pruning off and on; the two alternate so that machine-load drift hits both."""
    time_prefill(model, inputs, 1)
    unpruned_times, pruned_times = [], []
    for _ in range(repeats):
        model.configure_flowcut(enabled=False)
        unpruned_times += time_prefill(model, stock_inputs, 1)
        model.configure_flowcut(enabled=True)
        pruned_times += time_prefill(model, inputs, 1)
    return statistics.median(unpruned_times), statistics.median(pruned_times)


def speed_words(unpruned: float, pruned: float) -> str:
    """The prefill-time ratio in words that say which way it went."""
    if pruned <= unpruned:
        return f"ratio {pruned / unpruned:.2f} ({unpruned / pruned:.2f}x faster)"
    return f"ratio {pruned / unpruned:.2f} ({pruned / unpruned:.2f}x slower)"


def print_cache_answer_and_timing(output, inputs, answer: str, repeats: int, unpruned: float, pruned: float) -> list[int]:
    """The closing lines of the two-stage demos; returns the KV-cache length of every LLM layer."""
    lengths = [layer.keys.shape[2] for layer in cache_of(output).layers]
    print(f"  KV-cache length per LLM layer: {lengths} (stock: {inputs['input_ids'].shape[1]} in every layer)")
    print(f"  generated (random weights, so gibberish): {answer!r}")
    print(
        f"  prefill median over {repeats} runs: unpruned {unpruned * 1e3:.1f} ms, FlowCut {pruned * 1e3:.1f} ms "
        f"-> {speed_words(unpruned, pruned)}"
    )
    return lengths
