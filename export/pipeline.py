"""The exporter: a base checkpoint in, pruned variants out (to folders, and optionally to the Hub).

The pipeline is its stages, a module each; this module runs them:

1. :mod:`.resolve` finds the source (a local folder or a Hub repo id) and classifies it: its family, HF-format or
   the family's original layout; everything checkable without the weights is checked there.
2. :mod:`.convert` turns an original-layout checkpoint into the HF layout (the family's converter, streamed).
3. :mod:`.write` writes one variant folder: the weights byte-identical, ``config.json`` with the pruning fields and
   ``auto_map``, the remote-code files, the processor, tokenizer and generation config.
4. :mod:`.verify` loads the folder as remote code in a clean subprocess and checks it (keys, placeholder and
   kept-token counts, and one forward pass equal to the library's own classes on the same loaded instance), in three
   steps: :func:`~.verify.prepare_check`, :func:`~.checks.run_check` (standard library only) and
   :func:`~.verify.judge_check`.
5. :mod:`.card` renders README.md.
6. :mod:`.push` creates the repo and uploads the folder.

:mod:`.plan` names every variant, folder and repo before any stage runs. :func:`export` runs :func:`prepare_export`
(stages 1-3 for every variant), the checks, then :func:`finish_export` (stages 4-6). ``flowcut-hf export`` runs the
same three parts in separate processes, so that the process that waits on a check holds no torch beside it
(:mod:`flowcut_hf.export_cli`). Every variant is assembled in a temporary folder beside its destination and renamed
into place only after all of them verified, so an interrupted export never leaves a half-written variant. The
exporter never loads model weights itself: tensors are copied as files, and the checks that need the model run in
subprocesses.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import shutil
import signal
import tempfile
import threading
import uuid
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from ..amounts import RetainedAmount, image_tokens_per_image
from .card import write_card
from .checks import CheckJob, VerificationError, run_check
from .convert import convert
from .options import ExportOptions
from .plan import VariantPlan, VariantResult, plan_variants
from .push import PushError, announced_visibility, push_commit_message, push_variant
from .resolve import ResolvedSource, resolve
from .verify import judge_check, prepare_check, verification_summary
from .weights import pickle_refusal
from .write import MANIFEST_NAME, write_variant


class ExportInterrupted(KeyboardInterrupt):
    """Ctrl-C after the variant folders were moved into place: its message says what is complete and how to finish."""


@contextlib.contextmanager
def interruption_deferred():
    """Holds Ctrl-C back until the block is done (the block must be short), then raises it: moving the variants into
    place and recording them in the manifest happen together or not at all."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received = []
    previous = signal.signal(signal.SIGINT, lambda signum, frame: received.append(signum))
    try:
        yield
    finally:
        signal.signal(signal.SIGINT, previous)
    if received:
        raise KeyboardInterrupt


def fingerprint(resolved: ResolvedSource, amount: RetainedAmount) -> str:
    """Identifies what a variant folder was built from, so that a re-run can reuse it instead of rebuilding."""
    from .. import __version__

    if resolved.repo_id:
        # A Hub commit names its files; a dry run, which downloads only the metadata, gives the same fingerprint.
        source: list[Any] = [resolved.repo_id, resolved.commit]
    else:
        files = sorted(
            (p.name, p.stat().st_size, p.stat().st_mtime_ns) for p in resolved.local_dir.iterdir() if p.is_file()
        )
        source = [str(resolved.local_dir), files]
    code = [hashlib.sha256(p.read_bytes()).hexdigest() for p in resolved.family.remote_code_files()]
    payload = json.dumps([*source, amount.label, __version__, code])
    return hashlib.sha256(payload.encode()).hexdigest()


def existing_folder_action(plan: VariantPlan, resolved: ResolvedSource, manifest: dict[str, Any], options: ExportOptions) -> str:
    """What happens to a variant folder: ``"write"`` (none there, or ``--overwrite``), ``"reuse"`` (this command
    already finished it from the same source and settings, verified unless ``--skip-verify``) or ``"refuse"``. The real
    run and the dry run both ask this, so the dry run announces what the real run does."""
    if not plan.folder.exists() or options.overwrite:
        return "write"
    previous = manifest["variants"].get(plan.name) or {}
    same = previous.get("fingerprint") == fingerprint(resolved, plan.amount)
    return "reuse" if same and (previous.get("verified") or not options.verify) else "refuse"


@dataclass
class PendingVariant:
    """A variant written to its staging folder and waiting for its check (``check`` is None without verification)."""

    result: VariantResult
    staging: Path
    check: CheckJob | None = None


@dataclass
class PreparedExport:
    """What :func:`prepare_export` leaves for :func:`finish_export`: plain data, so that the two can run in separate
    processes with the checks between them (see :mod:`flowcut_hf.export_cli`)."""

    resolved: ResolvedSource
    options: ExportOptions
    work_dir: Path
    results: list[VariantResult]
    pending: list[PendingVariant]

    @property
    def checks(self) -> list[CheckJob]:
        return [variant.check for variant in self.pending if variant.check is not None]


def export(source: str | os.PathLike, options: ExportOptions, *, log: Callable[[str], None] = print) -> list[VariantResult]:
    """Runs the whole pipeline. See the module docstring for the stages."""
    prepared = prepare_export(source, options, log=log)
    if not isinstance(prepared, PreparedExport):
        return prepared
    try:
        reports = {}
        for job in prepared.checks:
            log(f"{job.name}: verify in a clean subprocess")
            reports[job.name] = run_check(job, options.max_memory)
        return finish_export(prepared, reports, log=log)
    finally:
        shutil.rmtree(prepared.work_dir, ignore_errors=True)


def prepare_export(
    source: str | os.PathLike, options: ExportOptions, *, log: Callable[[str], None] = print
) -> PreparedExport | list[VariantResult]:
    """Stages 1-3 for every variant (resolve, convert, write into staging folders in a work folder beside ``out``) and
    the verification jobs; a dry run's results instead. The caller runs the checks, then :func:`finish_export`, and
    removes ``work_dir`` whatever happens."""
    out = Path(options.out)
    resolved = resolve(source, options.revision, metadata_only=options.dry_run)
    plans = plan_variants(resolved, options)
    manifest = read_manifest(out)

    announce_base_model(resolved, options, log)
    pickled = [name for name in resolved.source_weight_files if name.endswith(".bin")]
    if pickled and not any(name.endswith(".safetensors") for name in resolved.source_weight_files) and not options.allow_pickle:
        raise pickle_refusal(f"the checkpoint in {resolved.repo_id or resolved.local_dir}", pickled[0])
    base_model = options.base_model or resolved.base_model
    for plan in plans:
        if plan.repo_id and base_model and plan.repo_id.lower() == base_model.lower():
            raise ValueError(f"--push {plan.repo_id} is the base model the variant is made from; choose another repo id.")
    if options.eval_results:
        # Read now, not at the card stage: a bad file must stop the export before hours of writing and checking.
        from ..hub_cards import load_eval_results

        load_eval_results(options.eval_results, default_model_name=plans[0].name)
    actions = {plan.name: existing_folder_action(plan, resolved, manifest, options) for plan in plans}
    for plan in plans:
        if actions[plan.name] == "refuse":
            raise FileExistsError(
                f"{plan.folder} already exists and was not exported from this source with these settings; pass "
                "--overwrite to replace it."
            )
    if options.dry_run:
        return _dry_run(resolved, plans, options, actions, log)

    work_dir = Path(tempfile.mkdtemp(prefix=".flowcut-export-", dir=_work_parent(out)))
    prepared = PreparedExport(resolved, options, work_dir, results=[], pending=[])
    try:
        converted = None
        for plan in plans:
            result = VariantResult(plan)
            prepared.results.append(result)
            if actions[plan.name] == "reuse":
                previous = manifest["variants"][plan.name]
                log(f"{plan.name}: already exported from this source in {plan.folder}; reusing it")
                result.reused = True
                result.token_schedule = previous.get("token_schedule")
                result.verification = previous.get("verification")
                # The card depends on the push target and the eval results, which may differ from the first run.
                staging = work_dir / plan.name
                staging.mkdir()
                write_card(staging, resolved, plan, result.verification, options, variant_folder=plan.folder)
                os.replace(staging / "README.md", plan.folder / "README.md")
                continue
            if converted is None:
                if resolved.kind == "original":
                    log(f"convert: original-layout {resolved.family.display_name} checkpoint -> HF layout "
                        f"({resolved.family.original_source_note(resolved.config, options.vision_tower)})")
                converted = convert(resolved, work_dir, vision_tower=options.vision_tower, allow_pickle=options.allow_pickle)
            staging = work_dir / plan.name
            log(f"{plan.name}: write ({plan.amount.describe(image_tokens_per_image(resolved.family, resolved.hf_config))})")
            write_variant(converted, plan.amount, staging, allow_pickle=options.allow_pickle)
            check = prepare_check(plan.name, staging, plan.amount, work_dir / f"verify-{plan.name}") if options.verify else None
            prepared.pending.append(PendingVariant(result, staging, check))
    except BaseException:
        shutil.rmtree(work_dir, ignore_errors=True)
        raise
    return prepared


def finish_export(
    prepared: PreparedExport, reports: dict[str, dict[str, Any]], *, log: Callable[[str], None] = print
) -> list[VariantResult]:
    """Stages 4-6: judges each check's report (``reports`` by variant name), writes the cards, moves the variants into
    place and pushes them. Nothing is moved or pushed unless every variant passed."""
    resolved, options = prepared.resolved, prepared.options
    for variant in prepared.pending:
        if variant.check is not None:
            report = judge_check(
                variant.check, reports[variant.check.name], variant.result.plan.amount,
                from_original=resolved.kind == "original",
            )
            variant.result.token_schedule = report["token_schedule"]
            variant.result.verification = verification_summary(report)
    out = Path(options.out)
    for variant in prepared.pending:
        log(f"{variant.result.plan.name}: card")
        write_card(variant.staging, resolved, variant.result.plan, variant.result.verification, options)
    with interruption_deferred():
        manifest = read_manifest(out)
        for variant in prepared.pending:
            result, plan = variant.result, variant.result.plan
            _move_into_place(variant.staging, plan.folder)
            manifest["variants"][plan.name] = {
                "fingerprint": fingerprint(resolved, plan.amount),
                "target_num": plan.target_num,
                "retain_ratio": plan.amount.retain_ratio,
                "verified": options.verify,
                "token_schedule": result.token_schedule,
                "verification": result.verification,
            }
            (out / MANIFEST_NAME).write_text(json.dumps(manifest, indent=2) + "\n")
    for result in prepared.results:
        result.files = sorted(p.name for p in result.plan.folder.iterdir())
    try:
        for result in prepared.results:
            if result.plan.repo_id:
                log(f"{result.plan.name}: push to {result.plan.repo_id}")
                result.pushed_commit, result.pushed_url = push_variant(
                    result.plan.folder, result.plan.repo_id, private=options.private,
                    commit_message=push_commit_message(resolved, options), create_pr=options.create_pr, log=log,
                )
    except KeyboardInterrupt:
        raise ExportInterrupted(
            f"interrupted during the push; the variant folders in {out} are complete: re-run the same command to "
            "finish the push"
        ) from None
    return prepared.results


class ExportWarning(UserWarning):
    """Something the export did not know and went on without; the message names the option that supplies it."""


def announce_base_model(resolved: ResolvedSource, options: ExportOptions, log: Callable[[str], None]) -> None:
    """Says which Hub model the variant's card names as its base, and where that came from; warns when none is known
    (the card then has no ``base_model``)."""
    if options.base_model:
        log(f"base model: {options.base_model} (from --base-model)")
    elif resolved.base_model:
        log(f"base model: {resolved.base_model} (from {resolved.base_model_origin}; --base-model overrides it)")
    else:
        downloaded = (
            f" It was downloaded at commit {resolved.download_commit}, but the download metadata does not name the repo."
            if resolved.download_commit else ""
        )
        warnings.warn(
            f"cannot tell which Hub model {resolved.local_dir} holds: neither its config's _name_or_path nor a model "
            f"card names it.{downloaded} The variant's card will have no base_model; pass --base-model OWNER/NAME to "
            "record it.",
            ExportWarning,
            stacklevel=2,
        )


def read_manifest(out: Path) -> dict[str, Any]:
    """The record of the variants already exported into ``out`` (see :data:`MANIFEST_NAME`)."""
    manifest_path = out / MANIFEST_NAME
    return json.loads(manifest_path.read_text()) if manifest_path.is_file() else {"variants": {}}


def _work_parent(out: Path) -> Path:
    # Staging next to the destination keeps the final rename atomic (same filesystem) and hard links possible.
    parent = out if out.exists() else out.parent
    parent.mkdir(parents=True, exist_ok=True)
    return parent


def _move_into_place(staging: Path, destination: Path) -> None:
    destination.parent.mkdir(parents=True, exist_ok=True)
    if destination.exists():
        retired = destination.with_name(f".{destination.name}.old-{uuid.uuid4().hex[:8]}")
        os.replace(destination, retired)
        os.replace(staging, destination)
        shutil.rmtree(retired, ignore_errors=True)
    else:
        os.replace(staging, destination)


def _dry_run(
    resolved: ResolvedSource, plans: list[VariantPlan], options: ExportOptions, actions: dict[str, str],
    log: Callable[[str], None],
) -> list[VariantResult]:
    source_desc = resolved.repo_id and f"{resolved.repo_id}@{resolved.commit}" or str(resolved.local_dir)
    log(f"dry run: nothing is written or pushed. Source: {source_desc} ({resolved.family.display_name}, {resolved.kind} format)")
    if resolved.kind == "original":
        log(f"  convert: original-layout {resolved.family.display_name} -> HF layout, "
            f"{resolved.family.original_source_note(resolved.config, options.vision_tower)}")
    if resolved.kind == "original":
        weights_line = (
            f"weights: converted to the HF layout, one tensor at a time, from {', '.join(resolved.source_weight_files)} "
            "(model*.safetensors shards and their index)"
        )
    elif not any(name.endswith(".safetensors") for name in resolved.source_weight_files):
        weights_line = f"weights: converted from pickle to safetensors, one file at a time (--allow-pickle): {', '.join(resolved.source_weight_files)}"
    else:
        weights_line = f"weights (unchanged, byte-identical): {', '.join(resolved.source_weight_files)}"
    code_files = ", ".join(p.name for p in resolved.family.remote_code_files())

    def log_push(plan: VariantPlan) -> None:
        if plan.repo_id:
            action = "open a pull request on" if options.create_pr else "commit to"
            message = push_commit_message(resolved, options)
            log(f"    would {action} {plan.repo_id} ({announced_visibility(plan.repo_id, options.private)}) with message {message!r}")

    results = []
    for plan in plans:
        if actions[plan.name] == "reuse":
            log(f"  {plan.name}: already exported from this source in {plan.folder}; the real run reuses it "
                "(and rewrites only its README.md)")
            log_push(plan)
            results.append(VariantResult(plan))
            continue
        log(f"  {plan.name}: would {'replace' if plan.folder.exists() else 'write'} {plan.folder}")
        log(f"    {weights_line}")
        if plan.amount.preset is not None:
            field = f"pruning_method=vflowopt and the preset's vflowopt_* fields ({plan.amount.describe(0)})"
        elif plan.target_num is not None:
            field = f"flowcut_target_num={plan.target_num}"
        else:
            field = f"flowcut_retain_ratio={plan.amount.retain_ratio:g}"
        log(f"    config.json with {field}, auto_map; remote code: {code_files}")
        if resolved.family.copies_processor_files:
            log("    the stock processor's files, copied byte for byte (configs, tokenizer files, chat template); "
                "generation_config.json, README.md")
        else:
            log("    processor_config.json, tokenizer files, chat template, generation_config.json, README.md")
        log_push(plan)
        results.append(VariantResult(plan))
    return results


__all__ = [
    "ExportInterrupted", "ExportOptions", "ExportWarning", "PreparedExport", "PushError", "RetainedAmount",
    "VerificationError", "export", "finish_export", "prepare_export",
]
