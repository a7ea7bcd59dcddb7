"""``flowcut-hf demo`` on LLaVA-NeXT: FlowCut in process on the tiny built-in model, two images of different grids."""

from __future__ import annotations

import torch

from ...api import flowcut
from ...benchmark import interleaved_prefill_medians, print_cache_answer_and_timing
from ...modeling.modeling_flowcut_llava_next import stock_token_count
from ...tiny import synthetic_image
from .builtin import build_tiny_llava_next

PROMPT = "USER: <image>\n<image>\nWhat is different between these two pictures? ASSISTANT:"
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


