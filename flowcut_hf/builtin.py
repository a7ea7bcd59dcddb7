"""The built-in random models: real architectures and geometry, random weights, no download.

Two sizes per family: ``"builtin"``, the family's 7B geometry at 1/4 width (what ``flowcut-hf bench`` measures by
default), and ``"tiny"``, the real token geometry at tiny widths (what the tests and the demo use). Vision attention is
sharpened so that FlowCut's schedule is realistic on random weights.

:func:`save_builtin_model` writes one as a complete checkpoint folder (weights, config, generation config and the
processor), which every command takes as a source, ``flowcut-hf export`` included::

    import torch
    from flowcut_hf.builtin import save_builtin_model

    save_builtin_model("llava-preset-fp16", family="llava", dtype=torch.float16, max_shard_size="200MB")
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path

import torch

BUILTIN_SIZES = ("builtin", "tiny")


def _llava(size: str, seed: int):
    if size == "tiny":
        from .tiny import build_tiny_llava

        return build_tiny_llava(seed=seed)
    from .presets import bench_preset_config
    from .tiny import build_random_llava

    return build_random_llava(bench_preset_config(), seed=seed)


def _llava_next(size: str, seed: int):
    if size == "tiny":
        from .tiny import build_tiny_llava_next

        return build_tiny_llava_next(seed=seed)
    from .presets import bench_preset_next_config
    from .tiny import build_random_llava_next

    return build_random_llava_next(bench_preset_next_config(), seed=seed)


def _qwen(version: str) -> Callable:
    def build(size: str, seed: int):
        from .tiny import build_tiny_qwen_vl

        if size == "tiny":
            return build_tiny_qwen_vl(version, seed=seed)
        if version != "2":
            raise ValueError("the 'builtin' Qwen model has Qwen2-VL-7B geometry: use family 'qwen2-vl' (or size 'tiny')")
        from .presets import bench_preset_qwen2_vl_config
        from .tiny import STOCK_QWEN_PIXELS, build_random_qwen_vl, build_tiny_qwen_processor, build_tiny_qwen_tokenizer
        from .tiny import qwen_token_ids

        tokenizer = build_tiny_qwen_tokenizer()
        config = bench_preset_qwen2_vl_config(vocab_size=len(tokenizer), **qwen_token_ids(tokenizer))
        return build_random_qwen_vl(config, tokenizer, seed), build_tiny_qwen_processor(tokenizer, "2", STOCK_QWEN_PIXELS)

    return build


def _llava_onevision(size: str, seed: int):
    from .tiny import build_random_llava_onevision, build_tiny_llava_onevision

    if size == "tiny":
        return build_tiny_llava_onevision(seed=seed)
    from .presets import bench_preset_llava_onevision_config

    return build_random_llava_onevision(bench_preset_llava_onevision_config, seed)


BUILDERS: dict[str, Callable] = {
    "llava": _llava,
    "llava-next": _llava_next,
    "qwen2-vl": _qwen("2"),
    "qwen2.5-vl": _qwen("2.5"),
    "llava-onevision": _llava_onevision,
}
"""The command line's family words (``--family``) and the builder of each family's built-in models."""


def build_builtin_model(family: str = "llava", size: str = "builtin", seed: int = 0):
    """``(model, processor)``: a random stock model of ``family`` (a ``--family`` word) at ``size`` and its stock
    processor, in eval mode, in float32."""
    if family not in BUILDERS:
        raise ValueError(f"unknown family {family!r}; built-in models exist for {', '.join(BUILDERS)}")
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown size {size!r}; the built-in sizes are {', '.join(BUILTIN_SIZES)}")
    return BUILDERS[family](size, seed)


def save_builtin_model(
    folder: str | os.PathLike,
    family: str = "llava",
    size: str = "builtin",
    *,
    dtype: torch.dtype | None = None,
    max_shard_size: str | int | None = None,
    seed: int = 0,
) -> Path:
    """Writes a built-in model as a complete checkpoint folder (weights, config, generation config, processor and
    tokenizer) and returns it. ``dtype`` casts the weights (e.g. ``torch.float16``); ``max_shard_size`` shards them."""
    model, processor = build_builtin_model(family, size, seed)
    if dtype is not None:
        model = model.to(dtype)
    folder = Path(folder)
    model.save_pretrained(folder, **({"max_shard_size": max_shard_size} if max_shard_size is not None else {}))
    processor.save_pretrained(folder)
    return folder


__all__ = ["BUILDERS", "BUILTIN_SIZES", "build_builtin_model", "save_builtin_model"]
