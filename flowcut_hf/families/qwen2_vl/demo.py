"""``flowcut-hf demo`` on Qwen2.5-VL: FlowCut in process on the tiny built-in model (whole 2x2 units out of the ViT, the
share after the LLM stage, window attention kept), two images of different sizes."""

from __future__ import annotations

import torch

from ...api import flowcut
from ...benchmark import interleaved_prefill_medians, print_cache_answer_and_timing
from ...tiny import synthetic_image
from .builtin import build_tiny_qwen_vl

QWEN_IMAGE_SIZES = [(448, 392), (168, 224)]  # (height, width): 56 and 48 merge units at the tiny pixel budget


def run_qwen_demo(
    target_num: int | None = None, repeats: int = 5, max_new_tokens: int = 12, seed: int = 0, retain_ratio: float = 0.25,
    version: str = "2.5",
) -> dict:
    """Runs the Qwen-VL demo (``version`` 2.5 by default: stock processor, whole 2x2 units pruned in the ViT, then in
    the LLM, window attention kept); ``target_num`` replaces ``retain_ratio`` when given. Returns its figures."""
    torch.manual_seed(seed)
    model, processor = build_tiny_qwen_vl(version, seed=seed)
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
    print(f"FlowCut demo: random Qwen{version}-VL-shaped model (32 ViT blocks, 2x2 merge units), {len(images)} images, {amount}")
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


