"""The built-in random models: real architectures and geometry, random weights, no download.

Two sizes per family: ``"builtin"``, the family's 7B geometry at 1/4 width (what ``flowcut-hf bench`` measures by
default), and ``"tiny"``, the real token geometry at tiny widths (what the tests and the demo use). Vision attention is
sharpened so that FlowCut's schedule is realistic on random weights. Each family's adapter builds its own
(:meth:`flowcut_hf.family.FlowCutFamily.builtin_model`).

:func:`save_builtin_model` writes one as a complete checkpoint folder (weights, config, generation config and the
processor), which every command takes as a source, ``flowcut-hf export`` included::

    import torch
    from flowcut_hf.builtin import save_builtin_model

    save_builtin_model("llava-preset-fp16", family="llava", dtype=torch.float16, max_shard_size="200MB")
"""

from __future__ import annotations

import os
from pathlib import Path

import torch

from .registry import family_named

BUILTIN_SIZES = ("builtin", "tiny")


def build_builtin_model(family: str, size: str = "builtin", seed: int = 0):
    """``(model, processor)``: a random stock model of ``family`` (its command-line word, e.g. ``llava-next``, or its
    name) at ``size`` and its stock processor, in eval mode, in float32."""
    if size not in BUILTIN_SIZES:
        raise ValueError(f"unknown size {size!r}; the built-in sizes are {', '.join(BUILTIN_SIZES)}")
    return family_named(family).builtin_model(size, seed)


def save_builtin_model(
    folder: str | os.PathLike,
    family: str,
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


__all__ = ["BUILTIN_SIZES", "build_builtin_model", "save_builtin_model"]
