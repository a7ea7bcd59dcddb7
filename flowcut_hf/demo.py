"""``flowcut-hf demo``: FlowCut end to end on small built-in models, with no download.

For each family it builds a random model with the real geometry (LLaVA-1.5: CLIP 336 px / 14 px patches, so 576
visual tokens per image; LLaVA-NeXT: the same CLIP on every anyres crop, up to ~2900 visual tokens per image; a
small Llama; Qwen2.5-VL: its 32-block windowed ViT and 2x2 merge units, at a small pixel budget), applies :func:`flowcut_hf.flowcut`, generates for a two-image prompt, and prints how many tokens each
image kept and the prefill time against the unpruned model, measured side by side in this run.
"""

from __future__ import annotations

import argparse
import statistics
import time

import torch

from .api import flowcut, flowcut_processor
from .modeling.modeling_flowcut_llava_next import stock_token_count
from .tiny import build_tiny_llava, build_tiny_llava_next, synthetic_image
from .cli import target_num_argument

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


def run_demo(target_num: int = 64, repeats: int = 5, max_new_tokens: int = 12, seed: int = 0) -> dict:
    """Runs the LLaVA-1.5 demo and returns its figures (also printed)."""
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

    unpruned, pruned = interleaved_prefill_medians(model, stock_inputs, inputs, repeats)

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


def print_cache_answer_and_timing(output, inputs, answer: str, repeats: int, unpruned: float, pruned: float) -> list[int]:
    """The closing lines of the two-stage demos; returns the KV-cache length of every LLM layer."""
    lengths = [layer.keys.shape[2] for layer in output.cache.layers]
    print(f"  KV-cache length per LLM layer: {lengths} (stock: {inputs['input_ids'].shape[1]} in every layer)")
    print(f"  generated (random weights, so gibberish): {answer!r}")
    print(
        f"  prefill median over {repeats} runs: unpruned {unpruned * 1e3:.1f} ms, FlowCut {pruned * 1e3:.1f} ms "
        f"-> ratio {pruned / unpruned:.2f} ({unpruned / pruned:.2f}x faster)"
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
    from .tiny import build_tiny_qwen_vl

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


DEMOS = {"llava": run_demo, "llava_next": run_next_demo, "qwen2_5_vl": run_qwen_demo}


def run_cli(args) -> int:
    families = list(DEMOS) if args.family == "all" else [args.family]
    for number, family in enumerate(families):
        if number:
            print()
        settings = {"repeats": args.repeats, "max_new_tokens": args.max_new_tokens}
        if args.target_num is not None:
            settings["target_num"] = args.target_num
        DEMOS[family](**settings)
    return 0


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run FlowCut on small built-in LLaVA-1.5, LLaVA-NeXT and Qwen2.5-VL models (no download)",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--family", choices=["all", *DEMOS], default="all", help="which model family to run (default: all)"
    )
    parser.add_argument(
        "--target-num", type=target_num_argument, default=None,
        help="visual tokens kept per image (default: the paper's, 64 for LLaVA-1.5 and 160 for LLaVA-NeXT; Qwen2.5-VL "
        "keeps a quarter of each image's tokens unless this is given)",
    )
    parser.add_argument("--repeats", type=int, default=5, help="timed prefill runs per configuration (default 5)")
    parser.add_argument("--max-new-tokens", type=int, default=12)
    parser.set_defaults(func=run_cli)
