"""``flowcut-hf bench``: prefill latency, FLOPs, KV cache and memory of FlowCut against the stock model and an oracle.

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

import argparse
import ctypes
import gc
import json
import math
import platform
import statistics
import sys
import time
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import torch
from torch import nn

from . import accounting
from .api import flowcut
from .modeling.configuration_flowcut_llava import FIELD_VALIDATORS, validate_target_num
from .cli import (
    BUILTIN_MODEL, TINY_MODEL, add_family_option, builtin_model_name, plain_help, retain_ratio_argument,
    target_num_argument,
)

__all__ = [
    "PRESET",
    "DEFAULT_PROMPT",
    "load_model",
    "example_image_path",
    "run_bench",
    "format_table",
    "BenchRow",
    "DeviceTimer",
    "ModelModes",
    "cache_nbytes",
    "compact_schedule",
    "paired_ratio",
    "record_vision_schedule",
    "stats_ms",
    "time_interleaved",
    "aligned_rows",
    "report_headline",
    "register_cli",
]

PRESET = BUILTIN_MODEL
TINY = TINY_MODEL
DEFAULT_PROMPT = "What is shown in this image? Answer in one sentence."
SCHEMA_VERSION = 1

TARGET_ORACLE_RATIO = 1.0
TARGET_PASSTHROUGH_OVERHEAD = 0.03
TARGET_SCORING_FRACTION = 0.02
TARGET_N = 64


# --------------------------------------------------------------------------- #
# loading
# --------------------------------------------------------------------------- #


def example_image_path() -> Path:
    """The example picture shipped in the package (``flowcut_hf/assets/example.png``)."""
    return Path(__file__).resolve().parent / "assets" / "example.png"


def resolve_device(device: str | torch.device | None) -> torch.device:
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(device)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda was asked for, but torch sees no CUDA device.")
    if device.type not in ("cpu", "cuda"):
        raise ValueError(f"device must be cpu or cuda, got {device}")
    return device


_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def resolve_dtype(dtype: str | torch.dtype | None, device: torch.device) -> torch.dtype:
    if isinstance(dtype, torch.dtype):
        return dtype
    if dtype in (None, "auto"):
        # Random preset weights stay finite in bf16; fp16 ranges are what real LLaVA checkpoints are tuned for, but
        # bf16 runs at the same speed on current GPUs.
        return torch.bfloat16 if device.type == "cuda" else torch.float32
    try:
        return _DTYPES[str(dtype).removeprefix("torch.")]
    except KeyError:
        raise ValueError(f"dtype must be one of auto, {', '.join(_DTYPES)}; got {dtype!r}") from None


def checkpoint_config(spec: str) -> dict:
    """The ``config.json`` of the folder or Hub repo ``spec``, read without loading anything else."""
    from transformers import PretrainedConfig

    from .export.resolve import looks_like_repo_id

    if not Path(spec).exists() and not looks_like_repo_id(spec):
        raise FileNotFoundError(f"model {spec!r} is neither an existing folder nor a Hub repo id (owner/name)")
    try:
        return PretrainedConfig.get_config_dict(spec)[0]
    except OSError:
        raise FileNotFoundError(f"{spec} has no config.json that can be read; is it a model checkpoint?") from None


def checkpoint_family(spec: str):
    """The FlowCut family of the folder or Hub repo ``spec``, from its config alone; refused in one line, as the
    exporter refuses it, when it is none."""
    from .registry import family_of_checkpoint

    return family_of_checkpoint(checkpoint_config(spec), spec)


def load_model(
    spec: str = PRESET,
    *,
    family: str = "llava",
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    attn_implementation: str | None = None,
    seed: int = 0,
):
    """Returns ``(model, processor)`` for ``spec``: a built-in random model of ``family`` (``"builtin"``, ``"tiny"``;
    see :mod:`flowcut_hf.builtin`), a local folder or a Hub repo id (whose own config says its family).

    Folders and repo ids are loaded with ``AutoModelForImageTextToText`` / ``AutoProcessor`` and
    ``trust_remote_code=True``, so both stock checkpoints and FlowCut exports work; one that is not of a FlowCut family
    is refused from its config, before anything loads. The model is put in eval mode on ``device`` in ``dtype``
    (``auto``: float32 on the CPU, bfloat16 on CUDA).
    """
    device = resolve_device(device)
    torch_dtype = resolve_dtype(dtype, device)
    if spec in (PRESET, TINY):
        from .builtin import build_builtin_model

        model, processor = build_builtin_model(family, spec, seed)
        if attn_implementation is not None:
            model.set_attn_implementation(attn_implementation)
    else:
        from transformers import AutoModelForImageTextToText, AutoProcessor

        checkpoint_family(spec)
        try:
            processor = AutoProcessor.from_pretrained(spec, trust_remote_code=True)
        except (OSError, ValueError) as error:
            raise ValueError(f"{spec} has no usable processor (tokenizer + image processor): {error}") from error
        kwargs = {"trust_remote_code": True, "dtype": torch_dtype}
        if attn_implementation is not None:
            kwargs["attn_implementation"] = attn_implementation
        model = AutoModelForImageTextToText.from_pretrained(spec, **kwargs)
    model = model.to(device=device, dtype=torch_dtype).eval()
    return model, processor


# --------------------------------------------------------------------------- #
# configurations and model modes
# --------------------------------------------------------------------------- #


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


def _flowcut_settings_snapshot(config) -> dict:
    return {name: config.__dict__[name] for name in FIELD_VALIDATORS if name in config.__dict__}


class ModelModes:
    """Switches ONE model instance between the stock classes, FlowCut at N and the oracle at N.

    The weights are shared by construction; only ``__class__`` of this instance (and of its ``.model``) changes, as
    :func:`flowcut_hf.flowcut` itself does. :meth:`restore` puts back the original classes and settings.
    """

    def __init__(self, model: nn.Module, full_tokens: int):
        from .registry import family_for_model

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


def _oracle_hook(keep: torch.Tensor):
    cache: dict[torch.device, torch.Tensor] = {}

    def pre_hook(_module, args):
        features = args[0]
        index = cache.get(features.device)
        if index is None:
            index = cache[features.device] = keep.to(features.device)
        return (features.index_select(-2, index), *args[1:])

    return pre_hook


def _vision_layers(model: nn.Module) -> Sequence[nn.Module]:
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

    handles = [layer.register_forward_pre_hook(hook, with_kwargs=True) for layer in _vision_layers(model)]
    try:
        yield lengths
    finally:
        for handle in handles:
            handle.remove()


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


# --------------------------------------------------------------------------- #
# measurement helpers
# --------------------------------------------------------------------------- #


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


def _ratio(a: float | None, b: float | None) -> float | None:
    if a is None or b is None or b == 0:
        return None
    return a / b


# --------------------------------------------------------------------------- #
# the benchmark
# --------------------------------------------------------------------------- #


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


def _prompt_ids(tokenizer, prompt: str, image_token_id: int, bos_token_id: int | None, count: int) -> list[int]:
    text = f"USER: <image>\n{prompt} ASSISTANT:"
    prefix, suffix = text.split("<image>")
    prefix_ids = list(tokenizer(prefix, add_special_tokens=True)["input_ids"])
    suffix_ids = list(tokenizer(suffix, add_special_tokens=False)["input_ids"])
    if bos_token_id is not None and (not prefix_ids or prefix_ids[0] != bos_token_id):
        prefix_ids = [bos_token_id] + prefix_ids
    return prefix_ids + [image_token_id] * count + suffix_ids


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


def run_bench(
    model: nn.Module | str = PRESET,
    processor=None,
    *,
    target_nums: Sequence[int] = (TARGET_N,),
    repeats: int = 5,
    warmup: int = 1,
    batch_size: int = 1,
    device: str | torch.device | None = None,
    dtype: str | torch.dtype | None = None,
    prompt: str = DEFAULT_PROMPT,
    image=None,
    passthrough: bool = True,
    scoring_runs: int | None = None,
    attn_implementation: str | None = None,
    progress: bool = True,
    spec: str | None = None,
) -> dict:
    """Runs the benchmark and returns the report (the ``--json`` document, see the module docstring).

    Args:
        model: a loaded LLaVA-1.5 model (stock or FlowCut; it is switched between modes in place and restored at the
            end) with its ``processor``, or a spec for :func:`load_model` (``"builtin"``, ``"tiny"``, folder, repo id).
        target_nums: the FlowCut / oracle token counts; any value >= 576 is the passthrough row.
        repeats, warmup: timed and untimed interleaved rounds.
        batch_size: prompts per prefill (the same prompt and image repeated).
        device, dtype: for a spec; a loaded model stays where it is.
        prompt: the question; the LLaVA-1.5 template ``USER: <image>\\n{prompt} ASSISTANT:`` is applied.
        image: a PIL image or a path; default the packaged example image.
        passthrough: add the ``flowcut@576`` row (FlowCut with nothing to prune).
        scoring_runs: instrumented runs per pruning FlowCut row (default ``repeats``).
        progress: show a tqdm bar on stderr.
    """
    from PIL import Image
    from tqdm.auto import tqdm

    from . import __version__
    import transformers

    if repeats < 1 or warmup < 0 or batch_size < 1:
        raise ValueError("need repeats >= 1, warmup >= 0 and batch_size >= 1")
    for target in target_nums:  # before loading a model that may take minutes
        validate_target_num(target)
    if isinstance(model, str):
        spec = model
        model, processor = load_model(model, device=device, dtype=dtype, attn_implementation=attn_implementation)
    elif processor is None:
        raise ValueError("pass the model's processor along with a loaded model")
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
                    kv_bytes, cached = cache_nbytes(output.cache)
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
        versions={
            "flowcut_hf": __version__,
            "torch": torch.__version__,
            "transformers": transformers.__version__,
            "python": platform.python_version(),
        },
    )


def _report(*, spec, model, rows, dev, dtype, settings, versions) -> dict:
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
                "fraction_of_prefill": _ratio(median_scoring, stats["median"]),
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
                "speedup_vs_stock": _ratio(stock_stats["median"], stats["median"]),
                "paired_speedup_vs_stock": paired_ratio(stock.samples, row.samples),
                "flowcut_over_oracle": _ratio(stats["median"], stats_ms(oracle.samples)["median"]) if oracle else None,
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
    device_name = torch.cuda.get_device_name(dev.device) if dev.cuda else (platform.processor() or platform.machine())
    return {
        "schema_version": SCHEMA_VERSION,
        "tool": "flowcut-hf bench",
        "versions": versions,
        "model": model_summary(spec, model),
        "device": {"type": dev.device.type, "name": device_name, "torch_threads": torch.get_num_threads()},
        "dtype": dtype_name,
        "settings": settings,
        "configs": configs,
        "targets": targets,
    }


# --------------------------------------------------------------------------- #
# output
# --------------------------------------------------------------------------- #


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


def _fmt(value, spec: str, missing: str = "-") -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return missing
    return format(value, spec)


def _percent(value, spec: str) -> str:
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
            _fmt(p["median"], ".1f"),
            _fmt(p["iqr"], ".1f"),
            f"{_fmt(p['min'], '.0f')}-{_fmt(p['max'], '.0f')}",
            _fmt(c["speedup_vs_stock"], ".2f") + "x",
            _fmt(c["flowcut_over_oracle"], ".3f"),
            _fmt(c["analytic"]["vision_flops"] / 1e9, ".1f"),
            _fmt(c["analytic"]["llm_flops"] / 1e9, ".1f"),
            _fmt(c["kv_cache"]["measured_bytes"] / mib, ".2f"),
            _fmt(c["peak_memory"]["bytes"] / mib, ".1f"),
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
        f"  FlowCut@64 / oracle@64 prefill      {_fmt(o['value'], '.3f')} (paired {_fmt(o['paired'], '.3f')}), "
        f"limit <= {o['limit']:.2f}: {verdict(o)}"
    )
    p = t["passthrough_overhead"]
    out.append(
        f"  nothing pruned vs stock             {_percent(p['value'], '+.2f')} (paired {_percent(p['paired'], '+.2f')}), "
        f"limit <= +{100 * p['limit']:.0f}%: {verdict(p)}"
    )
    s = t["scoring_fraction_at_64"]
    out.append(
        f"  scoring+selection / FlowCut@64      {_percent(s['value'], '.2f')}, "
        f"limit <= {100 * s['limit']:.0f}%: {verdict(s)}"
    )
    return "\n".join(out)


# --------------------------------------------------------------------------- #
# CLI
# --------------------------------------------------------------------------- #


def _cli(args: argparse.Namespace) -> int:
    from .registry import family_for_model

    if args.threads:
        torch.set_num_threads(args.threads)
    if args.json is not None and args.json.parent and not args.json.parent.exists():
        raise FileNotFoundError(f"the folder of --json {args.json} does not exist")
    model = processor = None
    args.model = builtin_model_name(args.model)
    if args.family != "llava" or args.model not in (PRESET, TINY):
        model, processor = load_model(args.model, family=args.family, device=args.device, dtype=args.dtype,
                                      attn_implementation=args.attn_implementation)
    family = family_for_model(model) if model is not None else None
    if family is not None and family.name == "llava_onevision":
        from .bench_onevision import format_onevision_table, run_onevision_bench

        if args.target_num or args.retain_ratio:
            raise ValueError("LLaVA-OneVision rows are VFlowOpt's released presets; --target-num and --retain-ratio do not apply")
        report = run_onevision_bench(
            model, processor, repeats=args.repeats, warmup=args.warmup, progress=not args.no_progress,
            spec=f"{args.model} (llava-onevision)" if args.model in (PRESET, TINY) else args.model,
        )
        print(format_onevision_table(report))
        return _write_json(args, report)
    if args.retain_ratio and (family is None or family.default_retain_ratio is None):
        raise ValueError("--retain-ratio applies to Qwen2-VL / Qwen2.5-VL models; use --target-num for LLaVA families")
    if family is not None and family.default_retain_ratio is not None:
        from .bench_qwen import DEFAULT_RATIOS, format_qwen_table, run_qwen_bench

        if args.target_num:
            raise ValueError("Qwen2-VL / Qwen2.5-VL rows are set by --retain-ratio, not --target-num")
        report = run_qwen_bench(
            model, processor, retain_ratios=args.retain_ratio or DEFAULT_RATIOS, repeats=args.repeats,
            warmup=args.warmup, progress=not args.no_progress,
            spec=f"{args.model} ({args.family})" if args.model in (PRESET, TINY) else args.model,
        )
        print(format_qwen_table(report))
    elif family is not None and family.llm_stage:
        from .bench_next import DEFAULT_TARGETS, format_next_table, run_next_bench

        report = run_next_bench(
            model, processor, target_nums=args.target_num or DEFAULT_TARGETS, repeats=args.repeats,
            warmup=args.warmup, progress=not args.no_progress,
            spec=f"{args.model} (llava-next)" if args.model in (PRESET, TINY) else args.model,
        )
        print(format_next_table(report))
    else:
        report = _run_llava_cli(args, model, processor)
        print(format_table(report))
    return _write_json(args, report)


def _write_json(args: argparse.Namespace, report: dict) -> int:
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def _run_llava_cli(args: argparse.Namespace, model, processor) -> dict:
    return run_bench(
        args.model,
        target_nums=args.target_num or [TARGET_N],
        repeats=args.repeats,
        warmup=args.warmup,
        batch_size=args.batch_size,
        device=args.device,
        dtype=args.dtype,
        prompt=args.prompt,
        image=args.image,
        passthrough=not args.no_passthrough,
        scoring_runs=args.scoring_runs,
        attn_implementation=args.attn_implementation,
        progress=not args.no_progress,
        spec=args.model,
    )


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time prefill of FlowCut vs the stock model and an oracle; FLOPs, KV cache, memory",
        description=plain_help(__doc__.split("JSON schema")[0]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", default=PRESET,
        help="'builtin' (default: the --family's 7B geometry at 1/4 width, random weights), 'tiny', a folder or "
        "a repo id (LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or Qwen2.5-VL, told apart by its config)",
    )
    add_family_option(
        parser, choices=("llava", "llava-next", "qwen2-vl", "qwen2.5-vl", "llava-onevision"), default="llava",
        help="family of 'builtin' and 'tiny': LLaVA-1.5 (default), LLaVA-NeXT (a 672x672 image, 5 crops, 2928 "
        "stock visual tokens; stock vs FlowCut vs oracle at 160, 320 and 640), or Qwen2-VL (a 1288x980 image, 1610 "
        "stock visual tokens; stock vs FlowCut vs oracle at retain ratios 0.333, 0.222 and 0.111; qwen2.5-vl: 'tiny' "
        "only), or LLaVA-OneVision (a 768x768 image, 3699 stock visual tokens; stock vs VFlowOpt's 10/25/50%% presets)",
    )
    parser.add_argument(
        "--retain-ratio", type=retain_ratio_argument, action="append", metavar="R",
        help="Qwen2-VL / Qwen2.5-VL: share of each image's tokens kept; repeat for several (default 0.333 0.222 0.111)",
    )
    parser.add_argument(
        "--target-num", type=target_num_argument, action="append", metavar="N",
        help="visual tokens kept per image; repeat for several (default 64; LLaVA-NeXT 160, 320, 640). For LLaVA-1.5 "
        "N >= 576 is the passthrough row",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument(
        "--dtype", choices=("auto", *_DTYPES), default="auto", help="auto: float32 on cpu, bfloat16 on cuda"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per prefill (default 1)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="question put in the LLaVA-1.5 template")
    parser.add_argument("--image", type=Path, default=None, help="image file (default: the packaged example)")
    parser.add_argument("--no-passthrough", action="store_true", help="skip the FlowCut-with-nothing-to-prune row")
    parser.add_argument("--scoring-runs", type=int, default=None, help="instrumented runs per row (default: repeats)")
    parser.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager, flash_attention_2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cli)
