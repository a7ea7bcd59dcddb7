"""``flowcut-hf demo``: the project's main job on a built-in model, then FlowCut in process on more families.

1. Export: a random model of the registry's first family (LLaVA-1.5-shaped: CLIP at 336 px / 14 px patches, so 576
   visual tokens per image; a small Llama) is saved as a complete checkpoint folder, and ``flowcut-hf export`` turns
   it into a FlowCut variant folder (the same weights, the FlowCut config fields, the remote code, the processor, a
   model card), verified in a clean process as every export is.
2. Load back: a fresh Python process, in which flowcut_hf cannot even be imported, loads the variant with
   transformers alone (``trust_remote_code=True``), generates for a two-image prompt, and measures the prefill time
   against the unpruned base, the two runs interleaved. The command prints where the variant is, how many tokens
   each image kept, and that ratio.
3. In process: ``flowcut_hf.flowcut`` on the tiny random models of the families that have a demo tour (LLaVA-NeXT and
   Qwen2.5-VL: pruning in the vision encoder, then inside the language model), with the tokens kept at each stage and
   the KV length of every layer.

Nothing is downloaded; the folders go to ``--out`` (default flowcut-demo), which a re-run replaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import warnings
from pathlib import Path

from .benchmark import speed_words
from .cli import deprecation_note, plain_help, target_num_argument
from .registry import REGISTRY, families, family_named
from .tiny import synthetic_image

DEMO_MARKER = ".flowcut-demo"
"""Marks a folder that ``flowcut-hf demo`` made, so that a re-run replaces it and nothing else."""

# Runs in a fresh interpreter in which flowcut_hf cannot be imported: the variant must work with transformers alone.
LOAD_BACK = """
import importlib.abc, json, statistics, sys, time
class BlockFlowcutHf(importlib.abc.MetaPathFinder):
    def find_spec(self, name, path=None, target=None):
        if name == "flowcut_hf" or name.startswith("flowcut_hf."):
            raise ModuleNotFoundError(f"No module named {name!r} (the variant must not need it)")
sys.meta_path.insert(0, BlockFlowcutHf())
import torch
from PIL import Image
from transformers import AutoModelForImageTextToText, AutoProcessor
variant, base, prompt, repeats, max_new_tokens, *image_files = sys.argv[1:]
model = AutoModelForImageTextToText.from_pretrained(variant, trust_remote_code=True)
processor = AutoProcessor.from_pretrained(variant, trust_remote_code=True)
stock = AutoModelForImageTextToText.from_pretrained(base)
stock_processor = AutoProcessor.from_pretrained(base)
images = [Image.open(path).convert("RGB") for path in image_files]
content = [{"type": "image"} for _ in images] + [{"type": "text", "text": prompt}]
chat = stock_processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
inputs = processor(images=images, text=chat, return_tensors="pt")
stock_inputs = stock_processor(images=images, text=chat, return_tensors="pt")
def prefill(which, which_inputs):
    start = time.perf_counter()
    which(**which_inputs, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start
image_inputs = {k: inputs[k] for k in ("pixel_values", "image_sizes", "image_grid_thw") if k in inputs}
with torch.inference_mode():
    features = model.model.get_image_features(**image_inputs)
    generated = model.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False,
                               suppress_tokens=[model.config.image_token_id])
    prefill(model, inputs), prefill(stock, stock_inputs)
    times = [(prefill(stock, stock_inputs), prefill(model, inputs)) for _ in range(int(repeats))]
print(json.dumps({
    "class": type(model).__name__,
    "kept_tokens_per_image": [len(tokens) for tokens in features.pooler_output],
    "token_schedule": list(getattr(features, "token_schedule", None) or []),
    "prompt_tokens_unpruned": stock_inputs["input_ids"].shape[1],
    "prompt_tokens": inputs["input_ids"].shape[1],
    "generated_text": processor.decode(generated[0, inputs["input_ids"].shape[1]:], skip_special_tokens=True),
    "prefill_seconds_unpruned": statistics.median(t for t, _ in times),
    "prefill_seconds_flowcut": statistics.median(t for _, t in times),
}))
"""


def prepare_demo_folder(out: Path) -> None:
    """Empties ``out`` for a new run: only a folder this command made (or none) is replaced, never a user's."""
    if out.exists():
        if not (out / DEMO_MARKER).is_file() and any(out.iterdir()):
            raise FileExistsError(f"{out} exists and was not made by flowcut-hf demo; choose another --out")
        shutil.rmtree(out)
    out.mkdir(parents=True)
    (out / DEMO_MARKER).write_text("made by flowcut-hf demo; a re-run replaces this folder\n")


QUESTION = "What is different between these two pictures?"


def run_export_demo(
    out: str | os.PathLike = "flowcut-demo", target_num: int | None = None, repeats: int = 5, max_new_tokens: int = 12,
    seed: int = 0,
) -> dict:
    """The main job end to end on the registry's first family: its tiny built-in checkpoint, exported as a FlowCut
    variant (verified; ``target_num`` by default the family's), then loaded back with transformers alone in a fresh
    process, generating and timed against the base. Returns the figures (also printed)."""
    from .builtin import save_builtin_model
    from .export.options import ExportOptions
    from .export.pipeline import ExportWarning, export

    from transformers.utils import logging as transformers_logging

    family = families()[0]
    target_num = target_num or family.default_target_num
    out = Path(out).absolute()
    prepare_demo_folder(out)
    transformers_logging.disable_progress_bar()  # the shard-writing bar of a tiny model says nothing
    print(f"FlowCut demo, the main job: a built-in random {family.display_name}-shaped model -> a FlowCut variant, "
          f"target_num={target_num}")
    base = save_builtin_model(out / f"tiny-{family.cli_name}", family.name, "tiny", seed=seed)
    stock_tokens = family.unpruned_image_tokens(family.config_from_dict(json.loads((base / "config.json").read_text())))
    print(f"  base checkpoint (random weights, {stock_tokens} visual tokens per image): {base}")
    image_files = []
    for index in (1, 2):
        path = out / "images" / f"example{index}.png"
        path.parent.mkdir(exist_ok=True)
        synthetic_image(index).save(path)
        image_files.append(path)

    print(f"  flowcut-hf export {base.name} --target-num {target_num} --out {out.name}:")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ExportWarning)  # random weights: no Hub model to name as the card's base
        (result,) = export(base, ExportOptions(target_nums=[target_num], out=out), log=lambda line: print(f"    {line}"))
    variant = result.plan.folder.absolute()

    print("  loading the variant in a fresh process with transformers alone (trust_remote_code=True) ...")
    with tempfile.TemporaryDirectory(prefix="flowcut-demo-") as elsewhere:
        env = {**os.environ, "HF_MODULES_CACHE": str(Path(elsewhere) / "modules"), "HF_HUB_OFFLINE": "1"}
        run = subprocess.run(
            [sys.executable, "-P", "-c", LOAD_BACK, str(variant), str(base), QUESTION, str(repeats), str(max_new_tokens),
             *map(str, image_files)],
            cwd=elsewhere, env=env, capture_output=True, text=True,
        )
    if run.returncode != 0:
        raise RuntimeError(f"the exported variant did not load back in a fresh process:\n{run.stderr[-4000:]}")
    figures = json.loads(run.stdout.strip().splitlines()[-1])
    unpruned, pruned = figures["prefill_seconds_unpruned"], figures["prefill_seconds_flowcut"]
    print(f"  variant: {variant}")
    print(f"    files: {', '.join(sorted(p.name for p in variant.iterdir()))}")
    print(f"    loaded as {figures['class']}")
    for index, count in enumerate(figures["kept_tokens_per_image"]):
        print(f"    image {index}: kept {count} of {stock_tokens} visual tokens")
    if figures["token_schedule"]:
        print(f"    vision-encoder schedule (tokens per layer): {figures['token_schedule']}")
    print(f"    LLM prompt length: {figures['prompt_tokens_unpruned']} tokens unpruned -> {figures['prompt_tokens']}")
    print(f"    generated (random weights, so gibberish): {figures['generated_text']!r}")
    print(
        f"    prefill median over {repeats} runs against the base: unpruned {unpruned * 1e3:.1f} ms, FlowCut "
        f"{pruned * 1e3:.1f} ms -> {speed_words(unpruned, pruned)}"
    )
    print(f"  use it: AutoModelForImageTextToText.from_pretrained({str(variant)!r}, trust_remote_code=True); publish "
          f"one: flowcut-hf export BASE --target-num {target_num} --out DIR --push ORG")
    return {**figures, "variant": str(variant), "base": str(base), "prefill_ratio": pruned / unpruned}


def tour_families() -> list:
    """The families with an in-process demo tour, in the registry's order."""
    return [family for family in families() if family.has_demo]


def demo_family(text: str) -> str:
    """``--family``'s type: a family's command-line word; its registry name (``llava_next``, the old spelling)
    still works, with a note."""
    for entry in REGISTRY:
        if text == entry.name != entry.cli_name:
            deprecation_note(f"--family {text}", f"--family {entry.cli_name}")
            return entry.cli_name
    return text


def run_cli(args) -> int:
    export_family = families()[0]
    if args.family == "all":
        chosen = [export_family, *(f for f in tour_families() if f is not export_family)]
    else:
        chosen = [family_named(args.family)]
    for number, family in enumerate(chosen):
        if number:
            print()
        if family is export_family:
            run_export_demo(args.out, args.target_num, args.repeats, args.max_new_tokens)
        else:
            family.demo(args.target_num, args.repeats, args.max_new_tokens)
    return 0


def register_cli(subparsers) -> None:
    export_family, tours = families()[0], [f for f in tour_families() if f is not families()[0]]
    parser = subparsers.add_parser(
        "demo",
        help=f"the main job on a built-in {export_family.display_name} model (export a FlowCut variant, load it back, "
        f"generate, time it), then FlowCut in process on {', '.join(f.display_name for f in tours)} (no download)",
        description=plain_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--family", type=demo_family, choices=["all", export_family.cli_name, *(f.cli_name for f in tours)], default="all",
        help=f"{export_family.cli_name}: the export job; {', '.join(f.cli_name for f in tours)}: FlowCut in process "
        "(default: all)",
    )
    parser.add_argument("--out", type=Path, default=Path("flowcut-demo"),
                        help="folder for the base checkpoint and the variant (default flowcut-demo; a re-run replaces it)")
    parser.add_argument(
        "--target-num", type=target_num_argument, default=None,
        help="visual tokens kept per image (default: each family's, as in the paper; a family whose token count "
        "follows the image size keeps a share of each image's tokens unless this is given)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed prefill runs per configuration (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="tokens each generation adds (default 12)")
    parser.set_defaults(func=run_cli)
