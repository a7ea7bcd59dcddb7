"""``flowcut-hf demo``: the project's main job on a built-in model, then FlowCut in process on two more families.

1. Export: a random LLaVA-1.5-shaped model (CLIP at 336 px / 14 px patches, so 576 visual tokens per image; a small
   Llama) is saved as a complete checkpoint folder, and ``flowcut-hf export`` turns it into a FlowCut variant folder
   (the same weights, the FlowCut config fields, the remote code, the processor that emits the kept count, a model
   card), verified in a clean process as every export is.
2. Load back: a fresh Python process, in which flowcut_hf cannot even be imported, loads the variant with
   transformers alone (``trust_remote_code=True``), generates for a two-image prompt, and measures the prefill time
   against the unpruned base, the two runs interleaved. The command prints where the variant is, how many tokens
   each image kept, and that ratio.
3. In process: ``flowcut_hf.flowcut`` on random LLaVA-NeXT- and Qwen2.5-VL-shaped models (pruning in the vision
   encoder, then inside the language model), with the tokens kept at each stage and the KV length of every layer.

Nothing is downloaded; the folders go to ``--out`` (default flowcut-demo), which a re-run replaces.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import warnings
from pathlib import Path

import torch

from .api import flowcut
from .cli import deprecation_note, plain_help, target_num_argument
from .modeling.modeling_flowcut_llava_next import stock_token_count
from .families.llava_next.builtin import build_tiny_llava_next
from .tiny import synthetic_image

PROMPT = "USER: <image>\n<image>\nWhat is different between these two pictures? ASSISTANT:"


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
    lengths = [layer.keys.shape[2] for layer in output.cache.layers]
    print(f"  KV-cache length per LLM layer: {lengths} (stock: {inputs['input_ids'].shape[1]} in every layer)")
    print(f"  generated (random weights, so gibberish): {answer!r}")
    print(
        f"  prefill median over {repeats} runs: unpruned {unpruned * 1e3:.1f} ms, FlowCut {pruned * 1e3:.1f} ms "
        f"-> {speed_words(unpruned, pruned)}"
    )
    return lengths


NEXT_IMAGE_SIZES = [(600, 800), (500, 300)]  # (height, width): a 2x2 anyres grid and a 2x1 one


def run_next_demo(target_num: int = 160, repeats: int = 5, max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Runs the LLaVA-NeXT demo (stock processor, pruning in the vision encoder and in the LLM); returns its figures."""
    torch.manual_seed(seed)
    model, processor = build_tiny_llava_next(seed=seed)
    images = [synthetic_image(index + 1, size=size) for index, size in enumerate(NEXT_IMAGE_SIZES)]
    inputs = processor(images=images, text=PROMPT, return_tensors="pt")
    flowcut(model, target_num=target_num)

    with torch.inference_mode():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"], image_sizes=inputs["image_sizes"])
        output = model(**inputs)
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=[model.config.image_token_id]
        )
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    unpruned, pruned = interleaved_prefill_medians(model, inputs, inputs, repeats)

    stock_counts = [stock_token_count(model.config, size) for size in NEXT_IMAGE_SIZES]
    into_llm = [len(tokens) for tokens in features.pooler_output]
    after_llm = [int(k.numel()) for k in output.llm_keep_indices]
    print(f"FlowCut demo: random LLaVA-NeXT-shaped model, {len(images)} images, target_num={target_num}")
    for index, size in enumerate(NEXT_IMAGE_SIZES):
        crops, kept = features.keep_indices[index].shape
        print(
            f"  image {index} ({size[1]}x{size[0]}, {crops} crops): {stock_counts[index]} stock visual tokens -> "
            f"{kept} per crop in the vision encoder -> {into_llm[index]} into the LLM -> {after_llm[index]} after LLM "
            f"layer {model.config.flowcut_llm_prune_layer}"
        )
    lengths = print_cache_answer_and_timing(output, inputs, answer, repeats, unpruned, pruned)
    return {
        "stock_tokens_per_image": stock_counts,
        "tokens_into_llm_per_image": into_llm,
        "tokens_after_llm_stage_per_image": after_llm,
        "kv_cache_lengths": lengths,
        "prefill_seconds_unpruned": unpruned,
        "prefill_seconds_flowcut": pruned,
        "prefill_ratio": pruned / unpruned,
        "generated_text": answer,
    }


QWEN_IMAGE_SIZES = [(448, 392), (168, 224)]  # (height, width): 56 and 48 merge units at the tiny pixel budget


def run_qwen_demo(
    target_num: int | None = None, repeats: int = 5, max_new_tokens: int = 12, seed: int = 0, retain_ratio: float = 0.25
) -> dict:
    """Runs the Qwen2.5-VL demo (stock processor, whole 2x2 units pruned in the ViT, then in the LLM, window attention
    kept); ``target_num`` replaces ``retain_ratio`` when given. Returns its figures."""
    from .families.qwen2_vl.builtin import build_tiny_qwen_vl

    torch.manual_seed(seed)
    model, processor = build_tiny_qwen_vl("2.5", seed=seed)
    images = [synthetic_image(index + 1, size=size) for index, size in enumerate(QWEN_IMAGE_SIZES)]
    content = [{"type": "image"}, {"type": "image"}, {"type": "text", "text": "What is different between these two pictures?"}]
    prompt = processor.apply_chat_template([{"role": "user", "content": content}], add_generation_prompt=True)
    inputs = processor(text=[prompt], images=images, return_tensors="pt")
    flowcut(model, **({"target_num": target_num} if target_num is not None else {"retain_ratio": retain_ratio}))

    with torch.inference_mode():
        features = model.model.get_image_features(inputs["pixel_values"], inputs["image_grid_thw"])
        output = model(**inputs)
        generated = model.generate(**inputs, max_new_tokens=max_new_tokens, do_sample=False)
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)
    unpruned, pruned = interleaved_prefill_medians(model, inputs, inputs, repeats)

    amount = f"target_num={target_num}" if target_num is not None else f"retain_ratio={retain_ratio}"
    print(f"FlowCut demo: random Qwen2.5-VL-shaped model (32 ViT blocks, 2x2 merge units), {len(images)} images, {amount}")
    for index, size in enumerate(QWEN_IMAGE_SIZES):
        print(
            f"  image {index} ({size[1]}x{size[0]}): {features.placeholder_counts[index]} stock visual tokens -> "
            f"{len(features.kept_units[index])} whole 2x2 units out of the ViT -> "
            f"{len(output.image_kept_units[index])} after LLM layer {model.config.flowcut_llm_prune_layer}"
        )
    lengths = print_cache_answer_and_timing(output, inputs, answer, repeats, unpruned, pruned)
    return {
        "stock_tokens_per_image": list(features.placeholder_counts),
        "tokens_into_llm_per_image": [len(units) for units in features.kept_units],
        "tokens_after_llm_stage_per_image": [len(units) for units in output.image_kept_units],
        "kv_cache_lengths": lengths,
        "prefill_seconds_unpruned": unpruned,
        "prefill_seconds_flowcut": pruned,
        "prefill_ratio": pruned / unpruned,
        "generated_text": answer,
    }


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
inputs = processor(images=images, text=prompt, return_tensors="pt")
stock_inputs = stock_processor(images=images, text=prompt, return_tensors="pt")
def prefill(which, which_inputs):
    start = time.perf_counter()
    which(**which_inputs, use_cache=True, logits_to_keep=1)
    return time.perf_counter() - start
with torch.inference_mode():
    features = model.model.get_image_features(pixel_values=inputs["pixel_values"])
    generated = model.generate(**inputs, max_new_tokens=int(max_new_tokens), do_sample=False,
                               suppress_tokens=[model.config.image_token_id])
    prefill(model, inputs), prefill(stock, stock_inputs)
    times = [(prefill(stock, stock_inputs), prefill(model, inputs)) for _ in range(int(repeats))]
print(json.dumps({
    "class": type(model).__name__,
    "kept_tokens_per_image": [int(k.numel()) for k in features.keep_indices],
    "token_schedule": list(features.token_schedule),
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


def run_export_demo(
    out: str | os.PathLike = "flowcut-demo", target_num: int = 64, repeats: int = 5, max_new_tokens: int = 12,
    seed: int = 0,
) -> dict:
    """The main job end to end: a built-in LLaVA-1.5-shaped checkpoint, exported as a FlowCut variant (verified), then
    loaded back with transformers alone in a fresh process, generating and timed against the base. Returns the
    figures (also printed)."""
    from .builtin import save_builtin_model
    from .export.options import ExportOptions
    from .export.pipeline import ExportWarning, export

    from transformers.utils import logging as transformers_logging

    out = Path(out).absolute()
    prepare_demo_folder(out)
    transformers_logging.disable_progress_bar()  # the shard-writing bar of a tiny model says nothing
    print(f"FlowCut demo, the main job: a built-in random LLaVA-1.5-shaped model -> a FlowCut variant, target_num={target_num}")
    base = save_builtin_model(out / "tiny-llava", "llava", "tiny", seed=seed)
    print(f"  base checkpoint (random weights, 576 visual tokens per image): {base}")
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
            [sys.executable, "-P", "-c", LOAD_BACK, str(variant), str(base), PROMPT, str(repeats), str(max_new_tokens),
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
        print(f"    image {index}: kept {count} of 576 visual tokens")
    print(f"    vision-encoder schedule (tokens per layer, CLS included): {figures['token_schedule']}")
    print(f"    LLM prompt length: {figures['prompt_tokens_unpruned']} tokens unpruned -> {figures['prompt_tokens']}")
    print(f"    generated (random weights, so gibberish): {figures['generated_text']!r}")
    print(
        f"    prefill median over {repeats} runs against the base: unpruned {unpruned * 1e3:.1f} ms, FlowCut "
        f"{pruned * 1e3:.1f} ms -> {speed_words(unpruned, pruned)}"
    )
    print(f"  use it: AutoModelForImageTextToText.from_pretrained({str(variant)!r}, trust_remote_code=True); publish "
          f"one: flowcut-hf export BASE --target-num {target_num} --out DIR --push ORG")
    return {**figures, "variant": str(variant), "base": str(base), "prefill_ratio": pruned / unpruned}


DEMOS = {"llava": run_export_demo, "llava-next": run_next_demo, "qwen2.5-vl": run_qwen_demo}
RENAMED_FAMILIES = {"llava_next": "llava-next", "qwen2_5_vl": "qwen2.5-vl"}


def demo_family(text: str) -> str:
    """``--family``'s type: the old spellings (``llava_next``, ``qwen2_5_vl``) still work, with a note."""
    if text in RENAMED_FAMILIES:
        deprecation_note(f"--family {text}", f"--family {RENAMED_FAMILIES[text]}")
        return RENAMED_FAMILIES[text]
    return text


def run_cli(args) -> int:
    families = list(DEMOS) if args.family == "all" else [args.family]
    for number, family in enumerate(families):
        if number:
            print()
        settings = {"repeats": args.repeats, "max_new_tokens": args.max_new_tokens}
        if args.target_num is not None:
            settings["target_num"] = args.target_num
        if family == "llava":
            settings["out"] = args.out
        DEMOS[family](**settings)
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="the main job on a built-in model (export a FlowCut variant, load it back, generate, time it), then "
        "FlowCut in process on LLaVA-NeXT and Qwen2.5-VL (no download)",
        description=plain_help(__doc__),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--family", type=demo_family, choices=["all", *DEMOS], default="all",
        help="llava: the export job on LLaVA-1.5; llava-next, qwen2.5-vl: FlowCut in process (default: all)",
    )
    parser.add_argument("--out", type=Path, default=Path("flowcut-demo"),
                        help="folder for the base checkpoint and the variant (default flowcut-demo; a re-run replaces it)")
    parser.add_argument(
        "--target-num", type=target_num_argument, default=None,
        help="visual tokens kept per image (default: the paper's, 64 for LLaVA-1.5 and 160 for LLaVA-NeXT; Qwen2.5-VL "
        "keeps a quarter of each image's tokens unless this is given)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed prefill runs per configuration (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=12, help="tokens each generation adds (default 12)")
    parser.set_defaults(func=run_cli)
