"""``flowcut-hf export``: turn a base LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or Qwen2.5-VL checkpoint into FlowCut variants, in
folders and on the Hub."""

from __future__ import annotations

import argparse
from pathlib import Path

from .export.pipeline import DEFAULT_NAME_PATTERN, ExportOptions, PushError, VerificationError, export, parse_memory_size

DESCRIPTION = """\
Turn a base LLaVA-1.5, LLaVA-NeXT, Qwen2-VL or Qwen2.5-VL checkpoint into pruned-by-design FlowCut variants.

SOURCE is a local folder or a Hub repo id: an HF-format LLaVA-1.5 (LlavaForConditionalGeneration, e.g.
llava-hf/llava-1.5-7b-hf), LLaVA-NeXT (LlavaNextForConditionalGeneration, e.g. llava-hf/llava-v1.6-mistral-7b-hf),
Qwen2-VL (Qwen2VLForConditionalGeneration, e.g. Qwen/Qwen2-VL-7B-Instruct) or Qwen2.5-VL
(Qwen2_5_VLForConditionalGeneration) checkpoint, or an original-LLaVA-1.5 one (LlavaLlamaForCausalLM, e.g.
liuhaotian/llava-v1.5-7b or JosephTong/llava-v1.5-7b-flowcut192), which is converted on the way.

--target-num is the number of visual tokens kept per image: for LLaVA-1.5 out of 576 (e.g. 64), for LLaVA-NeXT out
of up to 2928, after the LLM stage (e.g. 160; the vision encoder keeps half of it per anyres crop). For Qwen2-VL and
Qwen2.5-VL, whose token count follows the image size, --retain-ratio keeps a share of each image's tokens instead
(e.g. 0.111, as in the paper; the ViT keeps twice as many, in whole 2x2 merge units).

Each --target-num (or --retain-ratio) makes one variant in its own folder OUT/{base}-flowcut{N} (N = 64, or 0.111). With --push, each variant goes to
its own repo: --push ORG gives ORG/{base}-flowcut{N}; --push ORG/NAME names the repo of a single variant;
--push 'ORG/name-{n}' names several. The token comes from HF_TOKEN or `hf auth login`; it is never printed.
"""


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "export", help="export FlowCut variants of a LLaVA-1.5, LLaVA-NeXT or Qwen2(.5)-VL checkpoint (and push them)",
        description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("source", help="local folder or Hub repo id of the base checkpoint")
    parser.add_argument("--target-num", type=int, action="append", default=[], dest="target_nums",
                        help="visual tokens kept per image; repeat for several variants")
    parser.add_argument("--method", choices=("flowcut", "vflowopt"), default="flowcut",
                        help="the pruning method (vflowopt: LLaVA-OneVision, LLaVA-1.5, LLaVA-NeXT, with --preset)")
    parser.add_argument("--preset", action="append", default=[], dest="presets",
                        help="VFlowOpt: a released preset (10%%, 25%%, 50%%) or a preset JSON from `flowcut-hf search`; repeat for several")
    parser.add_argument("--retain-ratio", type=float, action="append", default=[], dest="retain_ratios",
                        help="Qwen2-VL / Qwen2.5-VL: share of each image's tokens kept (e.g. 0.111); repeat for several")
    parser.add_argument("--out", type=Path, required=True, help="folder that receives one sub-folder per variant")
    parser.add_argument("--push", metavar="REPO_ID", help="push to the Hub: a repo id, a namespace, or a pattern with {n}")
    parser.add_argument("--private", action="store_true", help="create the Hub repo(s) private")
    parser.add_argument("--revision", help="revision (branch, tag or commit) of a Hub SOURCE to export")
    parser.add_argument("--overwrite", action="store_true", help="replace variant folders that already exist")
    parser.add_argument("--dry-run", action="store_true", help="show what would be written and pushed, and stop")
    parser.add_argument("--commit-message", help="commit message for the push")
    parser.add_argument("--create-pr", action="store_true", help="open a pull request instead of committing to main")
    parser.add_argument("--allow-pickle", action="store_true", help="accept and convert pickle .bin weights (trusted sources only)")
    parser.add_argument("--vision-tower", type=Path, help="local CLIP folder for an original-LLaVA source (default: download the repo its config names)")
    parser.add_argument("--eval-results", type=Path, help="JSON file of evaluation results for the model card (model-index)")
    parser.add_argument("--base-model", help="Hub id to record as base_model in the card (default: the source repo id)")
    parser.add_argument("--name-pattern", default=DEFAULT_NAME_PATTERN, help=f"variant name pattern (default {DEFAULT_NAME_PATTERN!r})")
    parser.add_argument("--max-memory", metavar="SIZE",
                        help="memory the verification may use, e.g. 8GB (default: half the free memory); what does not "
                        "fit is offloaded to disk, so a model larger than RAM still verifies")
    parser.add_argument("--skip-verify", action="store_true", help="skip the subprocess verification (not recommended)")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.presets and args.method != "vflowopt":
        raise ValueError("--preset is VFlowOpt's: pass --method vflowopt")
    if args.method == "vflowopt" and not args.presets:
        raise ValueError("--method vflowopt needs --preset (10%, 25%, 50% or a preset JSON from `flowcut-hf search`)")
    options = ExportOptions(
        target_nums=args.target_nums, retain_ratios=args.retain_ratios, vflowopt_presets=args.presets, out=args.out, push=args.push, private=args.private, revision=args.revision,
        overwrite=args.overwrite, dry_run=args.dry_run, commit_message=args.commit_message, create_pr=args.create_pr,
        allow_pickle=args.allow_pickle, vision_tower=args.vision_tower, eval_results=args.eval_results,
        name_pattern=args.name_pattern, base_model=args.base_model, verify=not args.skip_verify,
        max_memory=parse_memory_size(args.max_memory) if args.max_memory else None,
    )
    try:
        results = export(args.source, options)
    except VerificationError as error:
        print(f"flowcut-hf export: verification failed, nothing was pushed: {error}")
        return 1
    except PushError as error:
        print(f"flowcut-hf export: {error}")
        return 1
    if not args.dry_run:
        for result in results:
            line = f"{result.plan.name}: {result.plan.folder}"
            if result.plan.repo_id:
                line += f" -> {result.plan.repo_id}" + (f" ({result.pushed_url})" if result.pushed_url else "")
            print(line)
    return 0
