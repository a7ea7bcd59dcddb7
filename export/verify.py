"""Stage 4 of the exporter: every variant folder is loaded as remote code in a clean process and checked before
anything is kept or pushed. In three steps, so that the process that waits on a check can hold nothing else:

1. :func:`prepare_check` writes the check image and assembles the check run (the generic scaffolding of
   :mod:`flowcut_hf.export.check_scripts` around the family's own part, or VFlowOpt's);
2. :func:`flowcut_hf.export.checks.run_check` runs it (standard library only);
3. :func:`judge_check` reads its report: the class it loaded as, no missing or unexpected keys, the placeholders and
   kept tokens the family's settings promise (:meth:`~flowcut_hf.family.FlowCutFamily.expected_check_counts`, or
   VFlowOpt's stage rule), and one forward pass equal to the library's own classes on the same loaded instance.
"""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..amounts import RetainedAmount
from ..registry import family_for_config
from . import check_scripts
from .checks import CheckJob, VerificationError

VERIFY_IMAGE_SIZE = (600, 800)
"""(height, width) of the check image: wide enough that an anyres family tiles it into several crops."""


def check_script(config: dict[str, Any], method: str) -> str:
    """The whole check run of a variant with ``config`` running ``method``."""
    family_part = check_scripts.VFLOWOPT if method == "vflowopt" else family_for_config(config).check_script()
    return (
        check_scripts.BLOCK_FLOWCUT_HF + check_scripts.LOAD_ONE_COPY + check_scripts.LOAD_VARIANT + family_part
        + check_scripts.LIBRARY_ON_SAME_INSTANCE
    )


def prepare_check(name: str, folder: Path, amount: RetainedAmount, check_dir: Path) -> CheckJob:
    """Step 1: the check run of ``folder``, ready for :func:`flowcut_hf.export.checks.run_check` (the check image
    is written into ``check_dir``)."""
    from ..tiny import synthetic_image

    folder = folder.resolve()
    check_dir.mkdir(parents=True, exist_ok=True)
    image_path = check_dir.resolve() / "synthetic.png"
    synthetic_image(0, size=VERIFY_IMAGE_SIZE).save(image_path)
    script = check_script(json.loads((folder / "config.json").read_text()), amount.method)
    return CheckJob(name, str(folder), str(check_dir.resolve()), script, [str(folder), str(image_path), str(check_dir.resolve() / "remote.pt")])


def expected_processor_class(family, method: str, from_original: bool) -> str:
    """The processor class a variant loads with: the family's FlowCut processor, or for VFlowOpt the stock one (a
    checkpoint converted from an original layout keeps the processor that tokenizes as the original code did)."""
    return family.processor_class_name if method == "flowcut" or from_original else family.stock_processor_class.__name__


def check_problems(job: CheckJob, remote: dict[str, Any], amount: RetainedAmount, *, from_original: bool = False) -> list[str]:
    """Step 3: what is wrong with a variant, judged from its check run's report and logits files."""
    import torch

    check_dir = Path(job.check_dir)
    config = json.loads((Path(job.folder) / "config.json").read_text())
    family = family_for_config(config)
    problems = []
    if remote["model_class"] != family.model_class.__name__:
        problems.append(f"loaded as {remote['model_class']}, not {family.model_class.__name__}")
    processor_class = expected_processor_class(family, amount.method, from_original)
    if remote["processor_class"] != processor_class:
        problems.append(f"processor loaded as {remote['processor_class']}, not {processor_class}")
    if remote["missing"] or remote["unexpected"]:
        problems.append(f"missing keys {remote['missing'][:5]}, unexpected keys {remote['unexpected'][:5]}")
    if amount.method == "vflowopt":
        expected = {}
        if not remote["forward_error"]:
            problems += vflowopt_problems(remote, config)
    else:
        expected = family.expected_check_counts(family.config_from_dict(config), amount, VERIFY_IMAGE_SIZE, remote)
    if "placeholders" in expected and remote["placeholders"] != expected["placeholders"]:
        problems.append(
            f"the processor emitted {remote['placeholders']} image placeholders, expected {expected['placeholders']}"
        )
    for key, what in (("kept", "tokens"), ("kept_per_crop", "tokens per crop [crops, kept]"), ("llm_kept", "tokens after the LLM stage")):
        if key in expected and remote[key] != expected[key]:
            problems.append(f"the model kept {remote[key]} {what}, expected {expected[key]}")
    if remote["forward_error"]:
        problems.append(f"the forward pass failed: {remote['forward_error']}")
    if not problems:
        remote_logits = torch.load(check_dir / "remote.pt")
        library_logits = torch.load(check_dir / "remote_library.pt")
        if remote["library_class"] != family.model_class.__name__:
            problems.append(f"the library's classes did not take over the loaded model ({remote['library_class']})")
        scale = float(library_logits.abs().max()) or 1.0
        if not torch.allclose(remote_logits, library_logits, rtol=1e-3, atol=1e-3 * scale):
            difference = float((remote_logits - library_logits).abs().max())
            problems.append(f"a forward pass of the remote code differs from the library's on the same weights by {difference:.3g}")
    return problems


def vflowopt_problems(remote: dict, config: dict[str, Any]) -> list[str]:
    """What a VFlowOpt variant's check run must show: stage 0 and the LLM stages keep what their settings say."""
    from ..modeling.vflowopt_core import vflowopt_settings

    settings = vflowopt_settings(SimpleNamespace(**config))
    length, recycled, kept = remote["placeholders"], remote["recycled"][0], remote["kept"][0]
    removed = round(length * (1 - settings.vision_keep)) + int(length / settings.cell_side**2)
    problems = []
    if kept != length - removed + recycled:
        problems.append(f"stage 0 kept {kept} of {length} tokens, its settings give {length - removed + recycled}")
    counts, current = [kept], kept
    for keep in settings.llm_keeps:
        current -= round(current * (1 - keep))
        counts.append(current)
    bounds = [0, *settings.llm_layers, len(remote["layer_lengths"])]
    expected = [remote["text_tokens"] + counts[stage] for stage in range(len(bounds) - 1) for _ in range(bounds[stage], bounds[stage + 1])]
    if remote["layer_lengths"] != expected:
        problems.append(f"the decoder layers cached {remote['layer_lengths']} tokens, the LLM stages give {expected}")
    return problems


def judge_check(job: CheckJob, remote: dict[str, Any], amount: RetainedAmount, *, from_original: bool = False) -> dict[str, Any]:
    """The report of a check run that passed; raises VerificationError naming every problem otherwise."""
    problems = check_problems(job, remote, amount, from_original=from_original)
    if problems:
        raise VerificationError(f"{Path(job.folder).name} failed verification: " + "; ".join(problems))
    return remote


def verification_summary(report: dict[str, Any]) -> dict[str, Any]:
    """The part of a verification report the model card counts FLOPs from, and the memory cap it ran under."""
    keys = ("token_schedule", "image_size", "kept", "kept_per_crop", "llm_kept", "text_tokens", "grid_thw", "layer_lengths",
            "placeholders", "memory_cap")
    return {key: report.get(key) for key in keys}


__all__ = ["VERIFY_IMAGE_SIZE", "check_problems", "check_script", "judge_check", "prepare_check", "verification_summary"]
