"""``flowcut-hf export``: turn a base checkpoint of any supported family into pruned-by-design variants, in folders
and on the Hub."""

from __future__ import annotations

import argparse
import json
import os
import pickle
import shutil
import signal
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

# Standard library only: this process runs the checks while they hold the model (see run_in_stages).
from .cli import EXIT_INTERRUPTED, retain_ratio_argument, target_num_argument
from .export.checks import CheckJob, VerificationError, run_check
from .export.options import DEFAULT_NAME_PATTERN, ExportOptions, parse_memory_size
from .registry import REGISTRY, display_names


def description() -> str:
    """The command's help text, its families read from the registry (which imports no adapter)."""
    families = "\n".join(
        f"  {entry.display_name} ({entry.model_class}"
        + (f", e.g. {entry.examples[0]}" if entry.examples else "") + f"): {', '.join(entry.methods)}"
        for entry in REGISTRY
    )
    originals = [entry.original_format for entry in REGISTRY if entry.original_format]
    converted = f"\nor a checkpoint in an original layout, converted on the way: {'; '.join(originals)}." if originals else ""
    ratio_families = display_names(lambda entry: "retain_ratio" in entry.amount_kinds)
    return f"""\
Turn a base checkpoint into pruned-by-design variants: FlowCut (the default), or VFlowOpt (--method vflowopt --preset).

SOURCE is a local folder or a Hub repo id of an HF-format checkpoint of a supported family (and the methods it runs):
{families}{converted}

--target-num is the number of visual tokens kept per image (where the family prunes inside the language model too,
the count after that stage; the vision encoder keeps half of it per crop). {ratio_families}, whose token count follows
the image size, take --retain-ratio instead: the share of each image's tokens kept (e.g. 0.111, as in the paper).

Each --target-num (or --retain-ratio, or --preset) makes one variant in its own folder OUT/{{base}}-flowcut{{N}} (N = 64,
or 0.111). With --push, each variant goes to its own repo: --push ORG gives ORG/{{base}}-flowcut{{N}}; --push ORG/NAME
names the repo of a single variant; --push 'ORG/name-{{n}}' names several. The token comes from HF_TOKEN or
`hf auth login`; it is never printed.
"""


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export pruned variants of a checkpoint of a supported family (and push them)",
        description=description(), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="local folder or Hub repo id of the base checkpoint")
    parser.add_argument("--target-num", type=target_num_argument, action="append", default=[], dest="target_nums",
                        help="visual tokens kept per image; repeat for several variants")
    parser.add_argument("--method", choices=("flowcut", "vflowopt"), default="flowcut",
                        help=f"the pruning method (vflowopt, with --preset: {display_names(lambda e: 'vflowopt' in e.methods)})")
    parser.add_argument("--preset", action="append", default=[], dest="presets",
                        help="VFlowOpt: a released preset (10%%, 25%%, 50%%) or a preset JSON from `flowcut-hf search`; repeat for several")
    parser.add_argument("--retain-ratio", type=retain_ratio_argument, action="append", default=[], dest="retain_ratios",
                        help=f"{display_names(lambda e: 'retain_ratio' in e.amount_kinds)}: share of each image's tokens kept "
                        "(e.g. 0.111); repeat for several")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives one sub-folder per variant")
    parser.add_argument("--push", metavar="REPO_ID", help="push to the Hub: a repo id, a namespace, or a pattern with {n}")
    parser.add_argument("--private", action="store_true", help="create the Hub repo(s) private")
    parser.add_argument("--revision", help="revision (branch, tag or commit) of a Hub SOURCE to export")
    parser.add_argument("--overwrite", action="store_true", help="replace variant folders that already exist")
    parser.add_argument("--dry-run", action="store_true", help="show what would be written and pushed, and stop")
    parser.add_argument("--commit-message", help="commit message for the push")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--allow-pickle", action="store_true", help="accept and convert pickle .bin weights (trusted sources only)")
    parser.add_argument("--vision-tower", type=Path, help="local vision-tower folder for an original-layout source that only "
                        "names its tower (default: download the repo its config names)")
    parser.add_argument("--eval-results", type=Path, nargs="+", action="extend", metavar="FILE",
                        help="JSON files of evaluation results for the model card's model-index (lmms-eval results "
                        "files, or the simple schema); several files, or the flag repeated, are merged")
    parser.add_argument("--base-model", help="Hub id to record as base_model in the card (default: the source repo id)")
    parser.add_argument("--name-pattern", default=DEFAULT_NAME_PATTERN, help=f"variant name pattern (default {DEFAULT_NAME_PATTERN!r})")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="memory the verification may use, e.g. 8GB (default: half the free memory); what does not "
                        "fit is offloaded to disk, so a model larger than RAM still verifies")
    parser.add_argument("--skip-verify", action="store_true", help="skip the subprocess verification (not recommended)")
    parser.set_defaults(func=run, on_interrupt=NOTHING_WRITTEN)


NOTHING_WRITTEN = "interrupted; nothing was written"
"""What Ctrl-C leaves before the variants are moved into place: their staging folders are removed."""


ONE_PROCESS_ENV = "FLOWCUT_EXPORT_ONE_PROCESS"
"""Set to 1 to run the whole export in the command's own process (the Python API's way)."""


def export_options(args: argparse.Namespace) -> ExportOptions:
    if args.presets and args.method != "vflowopt":
        raise ValueError("--preset is VFlowOpt's: pass --method vflowopt")
    if args.method == "vflowopt" and not args.presets:
        raise ValueError("--method vflowopt needs --preset (10%, 25%, 50% or a preset JSON from `flowcut-hf search`)")
    return ExportOptions(
        target_nums=args.target_nums, retain_ratios=args.retain_ratios, vflowopt_presets=args.presets, out=args.out, push=args.push, private=args.private, revision=args.revision,
        overwrite=args.overwrite, dry_run=args.dry_run, commit_message=args.commit_message, create_pr=args.create_pr,
        allow_pickle=args.allow_pickle, vision_tower=args.vision_tower, eval_results=args.eval_results,
        name_pattern=args.name_pattern, base_model=args.base_model, verify=not args.skip_verify,
        max_memory=parse_memory_size(args.max_memory) if args.max_memory else None,
    )


def run(args: argparse.Namespace) -> int:
    options = export_options(args)
    if options.verify and not options.dry_run and os.environ.get(ONE_PROCESS_ENV) != "1":
        return run_in_stages(args, options)

    def whole_export() -> list:
        from .export.pipeline import export

        return export(args.source, options)

    return report_outcome(whole_export, print_results=not options.dry_run)


def report_outcome(work: Callable[[], list | None], print_results: bool = True) -> int:
    """Runs ``work`` (an export or a part of one), prints the variants it finished (a dry run finished none) and turns
    its failures into the command's messages and exit codes."""
    from .export.pipeline import PushError

    try:
        results = work()
    except VerificationError as error:
        print(f"flowcut-hf export: verification failed, nothing was pushed: {error}", file=sys.stderr)
        return 1
    except PushError as error:
        print(f"flowcut-hf export: {error}", file=sys.stderr)
        return 1
    for result in (results or []) if print_results else []:
        line = f"{result.plan.name}: {result.plan.folder}"
        if result.plan.repo_id:
            line += f" -> {result.plan.repo_id}" + (f" ({result.pushed_url})" if result.pushed_url else "")
        print(line)
    return 0


def run_in_stages(args: argparse.Namespace, options: ExportOptions) -> int:
    """The export in three processes, so that the model is held beside nothing else: a worker writes every variant and
    prepares its check (it imports torch and transformers, then exits); this process, which imports neither, runs the
    checks, each in its clean subprocess; a second worker judges the checks' reports, writes the cards, moves the
    variants into place and pushes them. The stages and their guarantees are the Python API's (``export()``)."""
    state_dir = Path(tempfile.mkdtemp(prefix="flowcut-export-state-"))
    work_dir = None
    try:
        (state_dir / "args.pickle").write_bytes(pickle.dumps(args))
        returncode = run_worker("prepare", state_dir)
        if returncode or not (state_dir / "checks.json").is_file():
            return returncode
        stages = json.loads((state_dir / "checks.json").read_text())
        work_dir = Path(stages["work_dir"])
        reports = {}
        for job in map(CheckJob.from_json, stages["checks"]):
            print(f"{job.name}: verify in a clean subprocess", flush=True)
            try:
                reports[job.name] = run_check(job, options.max_memory)
            except VerificationError as error:
                print(f"flowcut-hf export: verification failed, nothing was pushed: {error}", file=sys.stderr)
                return 1
        (state_dir / "reports.json").write_text(json.dumps(reports))
        return run_worker("finish", state_dir)
    except WorkerInterrupted as interruption:
        if not interruption.said_so:
            print(f"flowcut-hf export: {NOTHING_WRITTEN}", file=sys.stderr)
        return EXIT_INTERRUPTED
    finally:
        if work_dir is None and (state_dir / "checks.json").is_file():  # the first worker finished as it was stopped
            work_dir = Path(json.loads((state_dir / "checks.json").read_text())["work_dir"])
        shutil.rmtree(state_dir, ignore_errors=True)
        if work_dir is not None:
            shutil.rmtree(work_dir, ignore_errors=True)


def run_worker(stage: str, state_dir: Path) -> int:
    """Runs a worker and returns its exit code. Ctrl-C reaches the worker (the terminal signals the whole process
    group), which cleans up and says in one line what it left; this process waits for it quietly meanwhile."""
    sys.stdout.flush()
    worker = subprocess.Popen([sys.executable, "-m", "flowcut_hf.export_cli", stage, str(state_dir)])
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        returncode = worker.wait()
    finally:
        signal.signal(signal.SIGINT, previous)
    if returncode == EXIT_INTERRUPTED:
        raise WorkerInterrupted(said_so=True)
    if returncode == -signal.SIGINT:  # stopped while its interpreter started, before it could say anything
        raise WorkerInterrupted(said_so=False)
    return returncode


class WorkerInterrupted(Exception):
    """The worker stopped on Ctrl-C (and, if ``said_so``, has said what it left)."""

    def __init__(self, said_so: bool) -> None:
        super().__init__()
        self.said_so = said_so


def work_stage(stage: str, state_dir: Path) -> int:
    """A worker of :func:`run_in_stages`: ``prepare`` or ``finish``. On Ctrl-C it cleans up, says in one line what it
    left, and exits with 130."""
    from .cli import report_errors

    def prepare() -> None:
        from .export.pipeline import PreparedExport, prepare_export

        args = pickle.loads((state_dir / "args.pickle").read_bytes())
        prepared = prepare_export(args.source, export_options(args))
        assert isinstance(prepared, PreparedExport)
        try:
            (state_dir / "prepared.pickle").write_bytes(pickle.dumps(prepared))
            checks = {"work_dir": str(prepared.work_dir), "checks": [job.to_json() for job in prepared.checks]}
            (state_dir / "checks.json").write_text(json.dumps(checks))
        except BaseException:
            shutil.rmtree(prepared.work_dir, ignore_errors=True)
            raise

    def finish() -> list:
        from .export.pipeline import finish_export

        prepared = pickle.loads((state_dir / "prepared.pickle").read_bytes())
        return finish_export(prepared, json.loads((state_dir / "reports.json").read_text()))

    return report_errors("export", lambda: report_outcome(prepare if stage == "prepare" else finish), NOTHING_WRITTEN)


if __name__ == "__main__":
    exit_code = work_stage(sys.argv[1], Path(sys.argv[2]))
    # The stage is done and has reported: a late Ctrl-C must not turn it into a traceback, and the interpreter's
    # teardown (which restores the default SIGINT action) is skipped.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(exit_code)
