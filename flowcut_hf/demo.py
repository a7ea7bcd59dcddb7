"""``flowcut-hf demo``: FlowCut end to end on a small built-in LLaVA-1.5-shaped model, with no download.

It builds a random LLaVA-1.5-geometry model (CLIP 336 px / 14 px patches, so 576 visual tokens per image; a small
Llama), applies :func:`flowcut_hf.flowcut`, generates for a two-image prompt, and prints how many tokens each image
kept and the prefill time against the unpruned model, measured side by side in this run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .api import flowcut, flowcut_processor
from .tiny import build_tiny_llava, synthetic_image

PROMPT = "USER: <image>\n<image>\nWhat is different between these two pictures? ASSISTANT:"


def time_prefill(model, inputs, repeats: int) -> list[float]:
    timings = []
    with torch.inference_mode():
        for _ in range(repeats):
            start = time.perf_counter()
            model(**inputs, use_cache=True, logits_to_keep=1)
            timings.append(time.perf_counter() - start)
    return timings


def run_demo(target_num: int = 64, repeats: int = 5, max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Runs the demo and returns its figures (also printed)."""
    torch.manual_seed(seed)
    model, stock_processor = build_tiny_llava(seed=seed)
    images = [synthetic_image(1), synthetic_image(2)]
    stock_inputs = stock_processor(images=images, text=PROMPT, return_tensors="pt")

    flowcut(model, target_num=target_num)
    processor = flowcut_processor(stock_processor, target_num=target_num)
    inputs = processor(images=images, text=PROMPT, return_tensors="pt")

    with torch.inference_mode():
        features = model.model.get_image_features(pixel_values=inputs["pixel_values"])
        generated = model.generate(
            **inputs, max_new_tokens=max_new_tokens, do_sample=False, suppress_tokens=[model.config.image_token_id]
        )
    answer = processor.decode(generated[0, inputs["input_ids"].shape[1] :], skip_special_tokens=True)

    # Interleave the two configurations so that drift in machine load hits both alike.
    time_prefill(model, inputs, 1)
    unpruned_times, pruned_times = [], []
    for _ in range(repeats):
        model.configure_flowcut(enabled=False)
        unpruned_times += time_prefill(model, stock_inputs, 1)
        model.configure_flowcut(enabled=True)
        pruned_times += time_prefill(model, inputs, 1)
    unpruned, pruned = statistics.median(unpruned_times), statistics.median(pruned_times)

    kept = [int(k.numel()) for k in features.keep_indices]
    print(f"FlowCut demo: random LLaVA-1.5-shaped model, {len(images)} images, target_num={target_num}")
    for index, count in enumerate(kept):
        print(f"  image {index}: kept {count} of 576 visual tokens")
    print(f"  vision-encoder schedule (tokens per layer, CLS included): {features.token_schedule}")
    print(f"  LLM prompt length: {stock_inputs['input_ids'].shape[1]} tokens unpruned -> {inputs['input_ids'].shape[1]}")
    print(f"  generated (random weights, so gibberish): {answer!r}")
    print(
        f"  prefill median over {repeats} runs: unpruned {unpruned * 1e3:.1f} ms, FlowCut {pruned * 1e3:.1f} ms "
        f"-> ratio {pruned / unpruned:.2f} ({unpruned / pruned:.2f}x faster)"
    )
    return {
        "kept_tokens_per_image": kept,
        "token_schedule": features.token_schedule,
        "prefill_seconds_unpruned": unpruned,
        "prefill_seconds_flowcut": pruned,
        "prefill_ratio": pruned / unpruned,
        "generated_text": answer,
    }


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run FlowCut on a small built-in LLaVA-1.5-shaped model (no download)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--target-num", type=int, default=64, help="visual tokens kept per image (default 64)")
    parser.add_argument("--repeats", type=int, default=5, help="timed prefill runs per configuration (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.set_defaults(func=lambda args: run_demo(args.target_num, args.repeats, args.max_new_tokens) and 0)
