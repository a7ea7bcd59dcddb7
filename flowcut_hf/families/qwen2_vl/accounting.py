"""The analytic FLOPs of Qwen2-VL's and Qwen2.5-VL's prefill, with FlowCut (see :mod:`flowcut_hf.accounting` for the
convention)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from ...accounting import PrefillFlops, check_count, llm_prefill_flops


def qwen_vision_flops(vision_config: Any, token_schedule: Sequence[int], merged_tokens: int) -> int:
    """FLOPs of a Qwen2-VL ViT over one image: the patch embedding of ``token_schedule[0]`` patches, block ``i`` on
    ``token_schedule[i]`` patches (full attention, as in every Qwen2-VL block) and the merger of ``merged_tokens``
    2x2 units. Qwen2.5-VL's window blocks attend less, so this overcounts their attention.
    """
    d = int(getattr(vision_config, "embed_dim", None) or vision_config.hidden_size)
    out = int(getattr(vision_config, "out_hidden_size", None) or vision_config.hidden_size)
    gated = getattr(vision_config, "intermediate_size", None) is not None and not hasattr(vision_config, "mlp_ratio")
    mlp = int(vision_config.intermediate_size) if gated else int(d * vision_config.mlp_ratio)
    merge = int(vision_config.spatial_merge_size) ** 2
    patch_pixels = int(vision_config.in_channels) * int(vision_config.temporal_patch_size) * int(vision_config.patch_size) ** 2
    total = 2 * int(token_schedule[0]) * patch_pixels * d
    for n in token_schedule:
        n = check_count("tokens", n)
        total += 2 * n * d * 4 * d + 2 * 2 * n * n * d + 2 * n * d * mlp * (3 if gated else 2)
    units = check_count("merged_tokens", merged_tokens)
    return total + 2 * units * (merge * d) ** 2 + 2 * units * merge * d * out


def qwen_prefill_flops(config, amount, llm_prune_layer: int, verification, prompt_tokens: int, image_size: Sequence[int]):
    """``(unpruned, pruned, what)`` for a Qwen variant: the ViT from its measured schedule (or unpruned, without a
    verification), and the LLM with twice the target before the LLM stage and the target after it."""
    vision, text = config.vision_config, config.text_config
    patch = vision.patch_size * vision.spatial_merge_size
    if verification:
        t, h, w = verification["grid_thw"]
        units = t * h * w // 4
        schedule, into_llm, after = verification["token_schedule"][0], verification["kept"][0], verification["llm_kept"][0]
        image_size = verification["image_size"]
    else:
        units = max(1, round(image_size[0] / patch)) * max(1, round(image_size[1] / patch))
        after = amount.retained(units)
        schedule, into_llm = [4 * units] * vision.depth, min(2 * after, units)
    layers = text.num_hidden_layers
    unpruned = qwen_vision_flops(vision, [4 * units] * vision.depth, units) + llm_prefill_flops(
        text, [prompt_tokens + units] * layers
    )
    pruned_lengths = [prompt_tokens + into_llm] * (llm_prune_layer + 1) + [prompt_tokens + after] * (layers - llm_prune_layer - 1)
    pruned = qwen_vision_flops(vision, schedule, into_llm) + llm_prefill_flops(text, pruned_lengths)
    what = (
        f"ViT and LLM, for one {image_size[1]}x{image_size[0]} image ({units} stock visual tokens) and a "
        f"{prompt_tokens}-token text prompt; "
    )
    return PrefillFlops(unpruned), PrefillFlops(pruned), what
