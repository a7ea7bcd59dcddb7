"""``flowcut-hf bench``: prefill latency, FLOPs, KV cache and memory of a pruned model against the stock model and an
oracle, in one process, on one copy of the weights, with the configurations interleaved.

Usage::

    flowcut-hf bench [MODEL] [--family F] [--target-num N ...] [--retain-ratio R ...] --repeats 5 --warmup 1 --json bench.json

MODEL is ``builtin`` (the default: the family's 7B geometry at 1/4 width, random weights, no download), ``tiny`` (the
test-size model), a local folder or a Hub repo id (a stock checkpoint or a variant, of any supported family; its
config says which). Every family compares the stock model, its pruning method at the given amounts and an
**oracle**: the stock model with its vision encoder at full length and only N image tokens fed to the LLM. The rows,
the targets and the JSON document (``--json``) of each family are described in its bench module
(``flowcut_hf/families/<family>/bench.py``), which builds them from the measuring toolkit
(:mod:`flowcut_hf.benchmark`).

One *prefill* is what ``generate()`` does for its first step: the forward pass over the prompt with
``use_cache=True`` and ``logits_to_keep=1``, image encoding included, under ``torch.inference_mode()``; it is timed
with ``time.perf_counter`` on the CPU and with CUDA events on a GPU. FLOPs are analytic (:mod:`flowcut_hf.accounting`),
counted from the per-layer token counts that actually happened; the KV cache is measured from the returned cache.

``--engine vllm`` serves the same comparison with vLLM (installed beside flowcut-hf, which registers its plug-in):
the stock model, the FlowCut variant at each ``--target-num`` and the oracle at the same count, one engine each, on the
same settings, sent the same ``--requests`` image requests per round, interleaved; it reports requests per second and
time to first token, with where that time goes (see :mod:`flowcut_hf.vllm_bench`). Only families that vLLM serves
pruned and that have a vLLM oracle run there; any other is refused before a model loads, with the list of those that do.

Noise: on a CPU shared with other processes, give torch one thread per core that is really free (``--threads 1`` on
a busy 2-core machine). The targets printed under the table are measured, not asserted.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Sequence

import torch
from torch import nn

from .amounts import ratio_refusal
from .benchmark import DEFAULT_PROMPT, DTYPES, BenchOptions, resolve_device, resolve_dtype
from .cli import (
    BUILTIN_MODEL, TINY_MODEL, add_family_option, builtin_model_name, plain_help, retain_ratio_argument,
    target_num_argument,
)
from .registry import cli_names, families, family_for_model, family_named

__all__ = ["load_model", "run_bench", "run_vllm_bench", "format_table", "register_cli"]


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
    spec: str = BUILTIN_MODEL,
    *,
    family: str | None = None,
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
    if spec in (BUILTIN_MODEL, TINY_MODEL):
        from .builtin import build_builtin_model

        model, processor = build_builtin_model(family or cli_names()[0], spec, seed)
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


def run_bench(
    model: nn.Module | str = BUILTIN_MODEL,
    processor=None,
    *,
    family: str | None = None,
    target_nums: Sequence[int] = (),
    retain_ratios: Sequence[float] = (),
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
    """Runs the benchmark of ``model``'s family and returns its report (the ``--json`` document).

    Args:
        model: a loaded model (stock or pruning; switched between modes in place and restored at the end) with its
            ``processor``, or a spec for :func:`load_model` (``"builtin"`` or ``"tiny"`` of ``family``, by default
            the registry's first, a folder, a repo id).
        target_nums / retain_ratios: the amounts of the pruned and oracle rows (the family's defaults if empty).
        repeats, warmup: timed and untimed interleaved rounds.
        device, dtype, attn_implementation: for a spec; a loaded model stays where it is.
        batch_size, prompt, image, passthrough, scoring_runs: see the family's bench module (an option a family has
            no use for is ignored).
        progress: show a tqdm bar on stderr.
    """
    family = family or cli_names()[0]
    if isinstance(model, str):
        spec = spec or (f"{model} ({family_named(family).cli_name})" if model in (BUILTIN_MODEL, TINY_MODEL) else model)
        model, processor = load_model(model, family=family, device=device, dtype=dtype, attn_implementation=attn_implementation)
    elif processor is None:
        raise ValueError("pass the model's processor along with a loaded model")
    model_family = family_for_model(model)
    if retain_ratios and "retain_ratio" not in model_family.amount_kinds:
        raise ratio_refusal(model_family)
    options = BenchOptions(
        target_nums=list(target_nums), retain_ratios=list(retain_ratios), repeats=repeats, warmup=warmup,
        batch_size=batch_size, prompt=prompt, image=image, passthrough=passthrough, scoring_runs=scoring_runs,
        attn_implementation=attn_implementation, progress=progress, spec=spec or type(model).__name__,
    )
    return model_family.run_bench(model, processor, options)


def format_table(report: dict) -> str:
    """The table ``flowcut-hf bench`` prints for a report of :func:`run_bench` (its family's)."""
    return family_named(report["family"]).format_bench(report)


def run_vllm_bench(
    spec: str = BUILTIN_MODEL,
    *,
    family: str | None = None,
    target_nums: Sequence[int] = (),
    requests: int = 8,
    repeats: int = 3,
    warmup: int = 1,
    max_tokens: int = 16,
    dtype: str = "auto",
    progress: bool = True,
) -> dict:
    """``flowcut-hf bench --engine vllm``: the family's stock model, FlowCut variants and oracles served by vLLM and
    timed interleaved (see :mod:`flowcut_hf.vllm_bench`); returns the report."""
    import importlib.util
    import tempfile

    from .registry import REGISTRY, display_names
    from .vllm_bench import VllmBenchOptions, run_vllm_bench as run_rows

    chosen = family_named(family or cli_names()[0]) if spec in (BUILTIN_MODEL, TINY_MODEL) else checkpoint_family(spec)
    entry = next(e for e in REGISTRY if e.name == chosen.name)
    measured = display_names(lambda e: "flowcut" in e.vllm_methods and e.vllm_oracle_model is not None)
    if "flowcut" not in entry.vllm_methods:
        raise ValueError(
            f"vLLM does not serve {chosen.display_name} pruned, so --engine vllm has nothing to measure there; it runs "
            f"{measured}. Bench {chosen.display_name} with transformers (leave --engine out)."
        )
    if entry.vllm_oracle_model is None:
        raise ValueError(
            f"--engine vllm has no oracle for {chosen.display_name} yet, so it does not measure it; it runs {measured}. "
            f"Bench {chosen.display_name} with transformers (leave --engine out)."
        )
    if importlib.util.find_spec("vllm") is None:
        raise ValueError(
            "--engine vllm needs vLLM installed beside flowcut-hf: pip install -e \".[vllm]\" on a machine with a CUDA "
            "torch, or on a CPU machine the environment .ci/vllm-env builds (see the README's 'Serving with vLLM')."
        )
    targets = list(target_nums) or [64]
    options = VllmBenchOptions(
        target_nums=targets, requests=requests, repeats=repeats, warmup=warmup, max_tokens=max_tokens, dtype=dtype,
        progress=progress,
    )
    log = (lambda line: print(line, file=sys.stderr)) if progress else (lambda _: None)
    with tempfile.TemporaryDirectory(prefix="flowcut-vllm-bench-") as folder:
        plan = chosen.vllm_bench_plan(Path(folder), spec, targets, requests)
        return run_rows(plan, options, log=log)


def _cli(args: argparse.Namespace) -> int:
    if args.json is not None and args.json.parent and not args.json.parent.exists():
        raise FileNotFoundError(f"the folder of --json {args.json} does not exist")
    if args.engine == "vllm":
        from .vllm_bench import format_vllm_table

        report = run_vllm_bench(
            builtin_model_name(args.model), family=args.family, target_nums=args.target_num or (),
            requests=args.requests, repeats=args.repeats, warmup=args.warmup, max_tokens=args.max_tokens,
            dtype=args.dtype, progress=not args.no_progress,
        )
        table = format_vllm_table(report)
    else:
        if args.threads:
            torch.set_num_threads(args.threads)
        report = run_bench(
            builtin_model_name(args.model), family=args.family, target_nums=args.target_num or (),
            retain_ratios=args.retain_ratio or (), repeats=args.repeats, warmup=args.warmup, batch_size=args.batch_size,
            device=args.device, dtype=args.dtype, prompt=args.prompt, image=args.image, passthrough=not args.no_passthrough,
            scoring_runs=args.scoring_runs, attn_implementation=args.attn_implementation, progress=not args.no_progress,
        )
        table = format_table(report)
    print(table)
    if args.json is not None:
        args.json.write_text(json.dumps(report, indent=2) + "\n")
        print(f"\nwrote {args.json}", file=sys.stderr)
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "bench",
        help="time prefill of a pruned model vs the stock model and an oracle; FLOPs, KV cache, memory",
        description=plain_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "model", nargs="?", default=BUILTIN_MODEL,
        help="'builtin' (default: the --family's 7B geometry at 1/4 width, random weights), 'tiny', a folder or "
        "a repo id (any supported family, told apart by its config)",
    )
    rows = "; ".join(f"{family.cli_name}: {family.bench_rows}" for family in families()).replace("%", "%%")
    add_family_option(
        parser, choices=cli_names(), default=cli_names()[0],
        help=f"family of 'builtin' and 'tiny' (default {cli_names()[0]}). The rows of each family: {rows}",
    )
    parser.add_argument(
        "--retain-ratio", type=retain_ratio_argument, action="append", metavar="R",
        help="share of each image's tokens kept, for families whose token count follows the image size; repeat for "
        "several (default: the family's)",
    )
    parser.add_argument(
        "--target-num", type=target_num_argument, action="append", metavar="N",
        help="visual tokens kept per image; repeat for several (default: the family's)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed rounds (default 5)")
    parser.add_argument("--warmup", type=int, default=1, help="untimed warm-up rounds (default 1)")
    parser.add_argument("--json", type=Path, metavar="FILE", help="write every figure to FILE as JSON")
    parser.add_argument("--device", choices=("cpu", "cuda"), default=None, help="default: cuda if available")
    parser.add_argument(
        "--dtype", choices=("auto", *DTYPES), default="auto", help="auto: float32 on cpu, bfloat16 on cuda"
    )
    parser.add_argument("--batch-size", type=int, default=1, help="prompts per prefill (default 1; families with one fixed-size image)")
    parser.add_argument("--prompt", default=DEFAULT_PROMPT, help="the question, in the model's template")
    parser.add_argument("--image", type=Path, default=None, help="image file (default: the family's example)")
    parser.add_argument("--no-passthrough", action="store_true", help="skip the row that prunes nothing, where a family has one")
    parser.add_argument("--scoring-runs", type=int, default=None, help="instrumented runs per row, where a family times its scoring (default: repeats)")
    parser.add_argument("--attn-implementation", default=None, help="e.g. sdpa, eager, flash_attention_2")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument(
        "--engine", choices=("transformers", "vllm"), default="transformers",
        help="transformers (default: prefill in process) or vllm: requests/s and time to first token of vLLM engines "
        "serving the stock model, the FlowCut variant and the oracle (vLLM installed beside flowcut-hf)",
    )
    parser.add_argument("--requests", type=int, default=8, help="--engine vllm: image requests per round (default 8)")
    parser.add_argument("--max-tokens", type=int, default=16, help="--engine vllm: tokens generated per request (default 16)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    parser.set_defaults(func=_cli)
