"""Convert an original-LLaVA checkpoint (haotian-liu layout) into an HF ``LlavaForConditionalGeneration`` folder.

The original layout (``LlavaLlamaForCausalLM``, model_type ``llava`` or ``llava_llama``) keeps a Llama language
model and the ``mm_projector`` in one checkpoint, and usually only *names* the CLIP vision tower
(``config.mm_vision_tower``). This module merges the three into the layout transformers expects, streaming
tensors file by file so that peak memory stays near one output shard, whatever the model size.

Output tensor names follow the llava-hf Hub layout (``language_model.model.*``, ``language_model.lm_head.*``,
``multi_modal_projector.*``, ``vision_tower.vision_model.*``). transformers 5.23 loads it with no missing or
unexpected keys and writes the same names back when a model loaded from it is saved; transformers 4.x reads it
natively too, which the bare ``vision_tower.*`` names of a from-scratch 5.x save would not allow.
"""

from __future__ import annotations

import argparse
import dataclasses
import importlib.util
import json
import logging
import math
import os
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download
from safetensors import safe_open

logger = logging.getLogger(__name__)

__all__ = [
    "IMAGE_TOKEN",
    "LLAVA_15_CHAT_TEMPLATE",
    "PAD_TOKEN",
    "ConversionReport",
    "convert_original_llava",
    "is_hf_llava",
    "is_original_llava",
    "main",
]

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
# llava-hf pads the vocabulary to a multiple of 64 (tensor-core friendly matmuls); users compare against it.
VOCAB_MULTIPLE = 64
DEFAULT_MAX_SHARD_SIZE = "5GB"

# LLaVA-1.5 (conv_vicuna_v1): "<system> USER: <image>\n<prompt> ASSISTANT: <answer></s>USER: ...".
# Images go first in a turn, as LLaVA-1.5 was trained that way; `{% generation %}` lets
# `return_assistant_tokens_mask=True` find the answer tokens.
LLAVA_15_CHAT_TEMPLATE = """\
{%- for message in messages -%}
    {%- if message['content'] is string -%}
        {%- set text = message['content'] -%}
        {%- set items = [] -%}
    {%- else -%}
        {%- set items = message['content'] -%}
        {%- set text = items | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') -%}
    {%- endif -%}
    {%- if message['role'] == 'system' -%}
        {{- text + ' ' -}}
    {%- else -%}
        {{- 'USER: ' if message['role'] == 'user' else 'ASSISTANT: ' -}}
        {%- for item in items if item['type'] == 'image' -%}
            {{- '<image>\\n' -}}
        {%- endfor -%}
        {%- if message['role'] == 'assistant' -%}
            {%- generation -%}{{- text + eos_token -}}{%- endgeneration -%}
        {%- else -%}
            {{- text + ' ' -}}
        {%- endif -%}
    {%- endif -%}
{%- endfor -%}
{%- if add_generation_prompt -%}
    {{- 'ASSISTANT:' -}}
{%- endif -%}
"""

_ORIGINAL_ARCHITECTURES = {"LlavaLlamaForCausalLM"}
# Other backbones of the original repo; named so the error can say why they are refused.
_UNSUPPORTED_ORIGINAL = {
    "LlavaMistralForCausalLM": "llava_mistral",
    "LlavaMptForCausalLM": "llava_mpt",
    "LlavaQwenForCausalLM": "llava_qwen",
}
# Original config fields the converter translates, or that only steered training; none belongs in the HF config.
_ORIGINAL_ONLY_KEYS = frozenset(
    {
        "mm_vision_tower",
        "vision_tower",
        "mm_hidden_size",
        "mm_vision_select_layer",
        "mm_vision_select_feature",
        "mm_projector_type",
        "image_aspect_ratio",
        "mm_patch_merge_type",
        "mm_use_im_start_end",
        "mm_use_im_patch_token",
        "architectures",
        "model_type",
        "torch_dtype",
        "dtype",
        "transformers_version",
        "_name_or_path",
        "use_mm_proj",
        "tune_mm_mlp_adapter",
        "freeze_mm_mlp_adapter",
        "mm_projector_lr",
        "mm_vision_tower_lr",
        "unfreeze_mm_vision_tower",
        "tokenizer_padding_side",
        "tokenizer_model_max_length",
        "image_grid_pinpoints",
        "max_length",
    }
)
_RESIZED = frozenset({"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"})
_SELECT_FEATURE_TO_STRATEGY = {"patch": "default", "cls_patch": "full"}
_SUPPORTED_PROJECTORS = {"mlp2x_gelu": "gelu"}
# CLIPVisionModel top-level modules when saved without the `vision_model.` prefix (transformers >= 5 from scratch).
_BARE_CLIP_VISION_MODULES = {"embeddings", "encoder", "pre_layrnorm", "post_layernorm"}
# Buffers some checkpoints carry that the HF model recomputes; keeping them would be "unexpected keys".
_IGNORABLE_SUFFIXES = (".rotary_emb.inv_freq", ".position_ids")
_SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


@dataclass(frozen=True)
class ConversionReport:
    """What :func:`convert_original_llava` wrote, for logs and for the caller's own checks.

    ``old_vocab_rows`` / ``new_vocab_rows`` are the embedding (and lm_head) rows before and after padding to a
    multiple of 64; ``tokenizer_size`` is ``len(tokenizer)`` after ``added_tokens``. ``vision_tower_source`` is
    ``"checkpoint"``, a local folder or the Hub repo id it was fetched from. ``dropped_keys`` are recomputable
    buffers left out; ``unused_config_keys`` are original config fields with no HF counterpart (worth a look
    when a checkpoint carries extra settings, e.g. FlowCut's).
    """

    out_dir: Path
    shards: tuple[str, ...]
    num_tensors: int
    total_bytes: int
    dtype: str
    vision_tower_source: str
    old_vocab_rows: int
    new_vocab_rows: int
    tokenizer_size: int
    added_tokens: tuple[str, ...]
    image_token_index: int
    pad_token_id: int
    vision_feature_layer: int
    vision_feature_select_strategy: str
    pad_to_square: bool
    dropped_keys: tuple[str, ...] = ()
    unused_config_keys: tuple[str, ...] = field(default_factory=tuple)


# --------------------------------------------------------------------------------------------- config helpers


def is_original_llava(config_dict: dict[str, Any]) -> bool:
    """True for an original (haotian-liu) Llama-based LLaVA ``config.json``: ``LlavaLlamaForCausalLM``."""
    architectures = config_dict.get("architectures") or []
    if any(arch in _ORIGINAL_ARCHITECTURES for arch in architectures):
        return True
    model_type = config_dict.get("model_type")
    if model_type == "llava_llama":
        return True
    # Original configs are flat Llama configs plus mm_* fields; HF ones nest text_config / vision_config.
    return (
        model_type == "llava"
        and "text_config" not in config_dict
        and ("mm_vision_tower" in config_dict or "mm_hidden_size" in config_dict)
        and not any(arch in _UNSUPPORTED_ORIGINAL for arch in architectures)
    )


def is_hf_llava(config_dict: dict[str, Any]) -> bool:
    """True for a transformers-format LLaVA ``config.json`` (``LlavaForConditionalGeneration`` layout)."""
    if is_original_llava(config_dict):
        return False
    architectures = config_dict.get("architectures") or []
    if any(arch in _UNSUPPORTED_ORIGINAL for arch in architectures):
        return False
    return config_dict.get("model_type") == "llava" or "LlavaForConditionalGeneration" in architectures


def _read_json(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


@dataclass(frozen=True)
class _Settings:
    """The multimodal choices of an original config, checked and translated to HF names."""

    vision_tower_name: str | None
    mm_hidden_size: int | None
    vision_feature_layer: int
    strategy: str
    projector_act: str
    pad_to_square: bool
    consumed_keys: frozenset[str]


def _check_original_config(cfg: dict[str, Any], source_dir: Path) -> _Settings:
    if not is_original_llava(cfg):
        architectures = cfg.get("architectures") or []
        if is_hf_llava(cfg):
            raise ValueError(
                f"{source_dir} already holds a transformers-format LLaVA checkpoint "
                f"(architectures={architectures}); it needs no conversion"
            )
        other = [arch for arch in architectures if arch in _UNSUPPORTED_ORIGINAL]
        if other or cfg.get("model_type") in _UNSUPPORTED_ORIGINAL.values():
            raise ValueError(
                f"{source_dir} is an original LLaVA checkpoint with a non-Llama backbone "
                f"({other or cfg.get('model_type')}); only LlavaLlamaForCausalLM is supported"
            )
        raise ValueError(
            f"{source_dir} is not an original LLaVA checkpoint: expected architectures "
            f"['LlavaLlamaForCausalLM'] or model_type 'llava'/'llava_llama' with mm_* fields, got "
            f"architectures={architectures}, model_type={cfg.get('model_type')!r}"
        )

    projector = cfg.get("mm_projector_type", "linear")  # the original code's default when the key is absent
    if projector not in _SUPPORTED_PROJECTORS:
        raise ValueError(
            f"unsupported mm_projector_type {projector!r} in {source_dir / 'config.json'}: "
            f"LlavaForConditionalGeneration has a two-layer MLP projector, so only "
            f"{sorted(_SUPPORTED_PROJECTORS)} can be converted"
        )
    select_feature = cfg.get("mm_vision_select_feature", "patch")
    if select_feature not in _SELECT_FEATURE_TO_STRATEGY:
        raise ValueError(
            f"unsupported mm_vision_select_feature {select_feature!r}; expected one of "
            f"{sorted(_SELECT_FEATURE_TO_STRATEGY)}"
        )
    if "mm_vision_select_layer" not in cfg:
        raise ValueError(f"{source_dir / 'config.json'} has no mm_vision_select_layer; cannot set vision_feature_layer")
    select_layer = cfg["mm_vision_select_layer"]
    if not isinstance(select_layer, int):
        raise ValueError(f"mm_vision_select_layer must be an int, got {select_layer!r}")

    aspect = cfg.get("image_aspect_ratio") or "square"
    if str(aspect).startswith("anyres"):
        raise ValueError(
            f"image_aspect_ratio {aspect!r} is LLaVA-NeXT (LLaVA-1.6) tiling; this converter handles LLaVA-1.5 only"
        )
    merge = cfg.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ValueError(f"mm_patch_merge_type {merge!r} is LLaVA-NeXT; only 'flat' (LLaVA-1.5) is supported")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if cfg.get(flag):
            raise ValueError(
                f"{flag}=true: the checkpoint expects extra image marker tokens that LlavaForConditionalGeneration "
                f"does not insert; such checkpoints cannot be converted faithfully"
            )

    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    return _Settings(
        vision_tower_name=str(tower) if tower else None,
        mm_hidden_size=cfg.get("mm_hidden_size"),
        vision_feature_layer=select_layer,
        strategy=_SELECT_FEATURE_TO_STRATEGY[select_feature],
        projector_act=_SUPPORTED_PROJECTORS[projector],
        pad_to_square=aspect == "pad",
        consumed_keys=_ORIGINAL_ONLY_KEYS,
    )


def _text_config_kwargs(cfg: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
    """LlamaConfig kwargs from the Llama fields of a flat original config, and the keys they came from."""
    from transformers import LlamaConfig, PreTrainedConfig

    generic = {f.name for f in dataclasses.fields(PreTrainedConfig)} - {
        "pad_token_id",
        "bos_token_id",
        "eos_token_id",
        "tie_word_embeddings",
    }
    llama_fields = {f.name for f in dataclasses.fields(LlamaConfig)} - generic
    # Pre-5.x configs spell RoPE as rope_theta / rope_scaling; LlamaConfig folds them into rope_parameters.
    accepted = llama_fields | {"rope_theta", "rope_scaling"}
    kwargs = {key: value for key, value in cfg.items() if key in accepted}
    consumed = set(kwargs)
    theta, scaling = kwargs.pop("rope_theta", None), kwargs.pop("rope_scaling", None)
    if "rope_parameters" not in kwargs and (theta is not None or scaling):
        # Built here rather than passed as rope_theta / rope_scaling, which LlamaConfig deprecates.
        params = dict(scaling or {})
        params["rope_type"] = params.pop("type", None) or params.get("rope_type") or "default"
        params["rope_theta"] = float(theta) if theta is not None else 10000.0  # Llama-2's, the legacy default
        kwargs["rope_parameters"] = params
    return kwargs, consumed


def _parse_size(size: int | str) -> int:
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not match:
        raise ValueError(f"cannot parse max_shard_size {size!r}; use bytes or e.g. '5GB', '500MB'")
    number, unit = float(match.group(1)), match.group(2).rstrip("B") or ""
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    return max(1, int(number * scale[unit]))


def _resolve_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown floating dtype {dtype!r}")
    return resolved


# --------------------------------------------------------------------------------------------- weight files


def weight_files(folder: Path, *, allow_pickle: bool, what: str) -> tuple[list[Path], bool]:
    """The weight files of ``folder`` in load order, and whether they are pickles. Refuses pickles unless allowed."""
    st_index = folder / "model.safetensors.index.json"
    if st_index.is_file():
        return _files_from_index(folder, st_index), False
    safetensors_files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if safetensors_files:
        return safetensors_files, False

    bin_index = folder / "pytorch_model.bin.index.json"
    # Only pytorch_model*.bin: LLaVA folders also hold training_args.bin / mm_projector.bin, which are not the model.
    bin_files = (
        _files_from_index(folder, bin_index) if bin_index.is_file() else sorted(folder.glob("pytorch_model*.bin"))
    )
    if bin_files:
        if not allow_pickle:
            raise pickle_refusal(f"the {what} in {folder}", bin_files[0].name)
        return bin_files, True
    raise FileNotFoundError(f"no {what} weights (*.safetensors or pytorch_model*.bin) found in {folder}")


def check_weight_files(files: Sequence[Path]) -> None:
    """Raises a ValueError naming the first damaged file: a safetensors file whose header does not parse or whose
    size is not what its header describes (truncated, or cut short by an interrupted download). Reads headers only."""
    for path in files:
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                raise ValueError(f"{path} is damaged ({problem}); download or copy it again.")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, or None: the 8-byte header length, the JSON header, and the
    data section's size against the largest offset the header names."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            header_length = int.from_bytes(prefix, "little")
            if header_length > size - 8:
                return f"the header claims {header_length} bytes, the file has {size}"
            header = json.loads(handle.read(header_length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"its header is not valid JSON: {error}"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [entry.get("data_offsets", [0, 0])[1] for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict)]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{size} bytes where its header describes {expected}"
    return None


def pickle_refusal(where: str, first_file: str) -> ValueError:
    """The error for pickle weights without the flag that accepts them (``where``: "the checkpoint in ...")."""
    return ValueError(
        f"{where} is stored as PyTorch pickle files ({first_file}, ...); unpickling untrusted files can run arbitrary "
        "code. Pass allow_pickle=True (CLI: --allow-pickle) to convert them anyway; they are then read with "
        "torch.load(weights_only=True)"
    )


def _files_from_index(folder: Path, index_path: Path) -> list[Path]:
    try:
        weight_map = _read_json(index_path).get("weight_map")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{index_path} is damaged ({error}); download or copy it again.") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no weight_map")
    names = sorted(set(weight_map.values()))  # file order, not key order, so output shards follow the source
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} lists shards that are not in {folder}: {missing[:5]}")
    return [folder / name for name in names]


def load_pickle_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap keeps a multi-GB .bin out of RAM; tensors are paged in only as they are written out.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format cannot mmap
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    return state


def _list_tensors(path: Path, pickled: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """Names, shapes and dtypes without reading the tensor data (safetensors) or only through mmap (pickles)."""
    if pickled:
        state = load_pickle_state(path)
        listing = {key: (tuple(t.shape), t.dtype) for key, t in state.items()}
        del state
        return listing
    listing = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
            view = handle.get_slice(key)
            listing[key] = (tuple(view.get_shape()), _SAFETENSORS_DTYPES.get(view.get_dtype()))
    return listing


def _iter_tensors(path: Path, pickled: bool, keys: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
    if pickled:
        state = load_pickle_state(path)
        try:
            for key in keys:
                # clone: mmap-backed tensors may share storage, which safetensors refuses to save.
                yield key, state[key].clone()
        finally:
            del state
        return
    with safe_open(str(path), framework="pt") as handle:
        for key in keys:
            yield key, handle.get_tensor(key)


# --------------------------------------------------------------------------------------------- key mapping


def _map_llava_key(key: str) -> str | None:
    """Original LLaVA name -> output name; None for names this converter does not know."""
    if key.startswith(("model.embed_tokens.", "model.layers.", "model.norm.")):
        return "language_model." + key
    if key.startswith("lm_head."):
        return "language_model." + key
    match = re.fullmatch(r"model\.mm_projector\.([02])\.(weight|bias)", key)
    if match:
        linear = "linear_1" if match.group(1) == "0" else "linear_2"
        return f"multi_modal_projector.{linear}.{match.group(2)}"
    prefix = "model.vision_tower.vision_tower.vision_model."
    if key.startswith(prefix):
        return "vision_tower.vision_model." + key[len(prefix) :]
    return None


def _map_clip_key(key: str) -> str | None:
    """CLIPModel / CLIPVisionModel name -> output name; None for the text tower, projections and logit scale."""
    if key.startswith("vision_model."):
        return "vision_tower." + key
    if key.split(".", 1)[0] in _BARE_CLIP_VISION_MODULES:
        return "vision_tower.vision_model." + key
    return None


def _model_key_to_output(key: str) -> str:
    """A ``LlavaForConditionalGeneration.state_dict()`` name -> the output (llava-hf) name."""
    if key.startswith("lm_head."):
        return "language_model." + key
    if key.startswith("model.language_model."):
        return "language_model.model." + key[len("model.language_model.") :]
    if key.startswith("model.multi_modal_projector."):
        return key[len("model.") :]
    if key.startswith("model.vision_tower."):
        rest = key[len("model.vision_tower.") :]
        return "vision_tower." + (rest if rest.startswith("vision_model.") else "vision_model." + rest)
    raise RuntimeError(
        f"unexpected LlavaForConditionalGeneration parameter {key!r}: this transformers version lays the model "
        f"out differently from what the converter knows"
    )


def _expected_shapes(config: Any) -> dict[str, tuple[int, ...]]:
    """Every tensor the HF model needs, with its shape, from a weightless (meta) instance."""
    from transformers import LlavaForConditionalGeneration

    with torch.device("meta"):
        model = LlavaForConditionalGeneration(config)
    return {_model_key_to_output(key): tuple(t.shape) for key, t in model.state_dict().items()}


def _is_ignorable(key: str) -> bool:
    return key.endswith(_IGNORABLE_SUFFIXES)


@dataclass
class _Plan:
    """Which tensor of which file becomes which output tensor."""

    files: list[tuple[Path, bool, list[tuple[str, str]]]] = field(default_factory=list)
    shapes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    source_dtypes: dict[str, torch.dtype | None] = field(default_factory=dict)
    dropped: list[str] = field(default_factory=list)

    def add(self, path: Path, pickled: bool, pairs: list[tuple[str, str]]) -> None:
        if pairs:
            self.files.append((path, pickled, pairs))


def _plan_llava(files: list[Path], pickled: bool, plan: _Plan) -> bool:
    """Maps the checkpoint's tensors; returns whether it carries the vision tower itself."""
    unknown: list[str] = []
    has_vision = False
    for path in files:
        pairs = []
        for key, (shape, dtype) in _list_tensors(path, pickled).items():
            out_key = _map_llava_key(key)
            if out_key is None:
                (plan.dropped if _is_ignorable(key) else unknown).append(key)
                continue
            if _is_ignorable(key):
                plan.dropped.append(key)
                continue
            if out_key in plan.shapes:
                raise ValueError(f"tensor {key!r} appears in more than one checkpoint file")
            has_vision = has_vision or out_key.startswith("vision_tower.")
            plan.shapes[out_key] = shape
            plan.source_dtypes[out_key] = dtype
            pairs.append((key, out_key))
        plan.add(path, pickled, pairs)
    if unknown:
        raise ValueError(
            f"{len(unknown)} checkpoint tensors have no place in LlavaForConditionalGeneration, e.g. "
            f"{sorted(unknown)[:5]}; is this a LLaVA-1.5 checkpoint?"
        )
    return has_vision


def _plan_clip(files: list[Path], pickled: bool, plan: _Plan) -> None:
    for path in files:
        pairs = []
        for key, (shape, dtype) in _list_tensors(path, pickled).items():
            out_key = _map_clip_key(key)
            if out_key is None or _is_ignorable(key):
                continue  # text tower, projections, logit_scale, buffers: not part of the LLaVA vision tower
            if out_key in plan.shapes:
                raise ValueError(f"vision tower tensor {key!r} appears twice")
            plan.shapes[out_key] = shape
            plan.source_dtypes[out_key] = dtype
            pairs.append((key, out_key))
        plan.add(path, pickled, pairs)


# --------------------------------------------------------------------------------------------- vision tower


def _vision_tower_folder(
    settings: _Settings, vision_tower_dir: Path | None, *, need_weights: bool, allow_pickle: bool
) -> tuple[Path, str]:
    """The local CLIP folder to read (downloading it if needed) and a label for the report."""
    if vision_tower_dir is not None:
        folder = Path(vision_tower_dir).expanduser()
        if not folder.is_dir():
            raise FileNotFoundError(f"vision_tower_dir {folder} is not a folder")
        if not (folder / "config.json").is_file():
            raise FileNotFoundError(f"vision_tower_dir {folder} has no config.json (expected a CLIP model folder)")
        return folder, str(folder)

    name = settings.vision_tower_name
    if not name:
        raise FileNotFoundError(
            "the checkpoint config names no mm_vision_tower; "
            "pass vision_tower_dir= (CLI: --vision-tower), a local CLIP folder"
        )
    local = Path(name).expanduser()
    if local.is_dir():
        return local, str(local)

    patterns = ["config.json", "preprocessor_config.json"]
    weight_patterns = ["*.safetensors", "*.safetensors.index.json"] if need_weights else []
    folder = _download(name, patterns + weight_patterns)
    if need_weights and not any(folder.glob("*.safetensors")):
        if not allow_pickle:
            raise ValueError(
                f"vision tower {name!r} offers no safetensors weights; its PyTorch pickle (.bin) files would need "
                f"allow_pickle=True (CLI: --allow-pickle), or pass vision_tower_dir= (CLI: --vision-tower) "
                f"with a safetensors copy"
            )
        folder = _download(name, [*patterns, "pytorch_model*.bin", "pytorch_model.bin.index.json"])
    return folder, name


def _download(repo_id: str, allow_patterns: list[str]) -> Path:
    try:
        # endpoint from the environment at call time: huggingface_hub reads HF_ENDPOINT only once, at import.
        path = snapshot_download(repo_id, allow_patterns=allow_patterns, endpoint=os.environ.get("HF_ENDPOINT") or None)
    except Exception as err:  # any Hub failure means the same thing to the user
        raise FileNotFoundError(
            f"could not fetch the vision tower {repo_id!r} named by mm_vision_tower "
            f"({type(err).__name__}: {err}); pass vision_tower_dir= (CLI: --vision-tower) with a local CLIP folder"
        ) from err
    folder = Path(path)
    if not (folder / "config.json").is_file():
        raise FileNotFoundError(f"vision tower {repo_id!r} downloaded without a config.json")
    return folder


def _image_processor_kwargs(clip_dir: Path, image_size: int) -> dict[str, Any]:
    """CLIP preprocessing settings, normalised to the dict form (old CLIP configs store bare ints)."""
    from transformers.image_utils import OPENAI_CLIP_MEAN, OPENAI_CLIP_STD

    kwargs: dict[str, Any] = {
        "size": {"shortest_edge": image_size},
        "crop_size": {"height": image_size, "width": image_size},
        "image_mean": list(OPENAI_CLIP_MEAN),
        "image_std": list(OPENAI_CLIP_STD),
        "resample": 3,  # bicubic, as CLIP
    }
    path = clip_dir / "preprocessor_config.json"
    if path.is_file():
        raw = _read_json(path)
        for key in ("image_mean", "image_std", "resample", "rescale_factor", "do_normalize", "do_convert_rgb"):
            if key in raw:
                kwargs[key] = raw[key]
        size = raw.get("size")
        if isinstance(size, int):
            kwargs["size"] = {"shortest_edge": size}
        elif isinstance(size, dict):
            kwargs["size"] = dict(size)
        crop = raw.get("crop_size")
        if isinstance(crop, int):
            kwargs["crop_size"] = {"height": crop, "width": crop}
        elif isinstance(crop, dict):
            kwargs["crop_size"] = dict(crop)
    crop = kwargs["crop_size"]
    if (crop.get("height"), crop.get("width")) != (image_size, image_size):
        raise ValueError(
            f"the CLIP preprocessor crops to {crop} but the vision tower expects {image_size}x{image_size} images"
        )
    return kwargs


def _build_image_processor(kwargs: dict[str, Any], pad_to_square: bool) -> Any:
    from transformers.utils import is_torchvision_available

    # Both backends save as "LlavaImageProcessor", so the folder loads the same whichever is installed.
    if is_torchvision_available():
        from transformers import LlavaImageProcessor as processor_class
    else:
        from transformers import LlavaImageProcessorPil as processor_class
    # do_pad pads to square with the mean colour before the CLIP resize + crop, as LLaVA's expand2square does.
    return processor_class(do_pad=pad_to_square, do_resize=True, do_center_crop=True, **kwargs)


# --------------------------------------------------------------------------------------------- tokenizer


def _prepare_tokenizer(source_dir: Path) -> tuple[Any, tuple[str, ...]]:
    from transformers import AddedToken, AutoTokenizer
    from transformers.models.auto.tokenization_auto import tokenizer_class_from_name

    if not any((source_dir / name).is_file() for name in ("tokenizer.json", "tokenizer.model")):
        raise FileNotFoundError(f"no tokenizer (tokenizer.json or tokenizer.model) in {source_dir}")
    if not (source_dir / "tokenizer.json").is_file() and importlib.util.find_spec("sentencepiece") is None:
        raise ValueError(
            f"{source_dir} has only a SentencePiece tokenizer.model, and reading it needs the sentencepiece package, "
            "which flowcut-hf requires but is not installed here: pip install sentencepiece protobuf"
        )
    declared = None
    if (source_dir / "tokenizer_config.json").is_file():
        declared = _read_json(source_dir / "tokenizer_config.json").get("tokenizer_class")
    tokenizer_class = None
    if isinstance(declared, str):
        tokenizer_class = tokenizer_class_from_name(declared) or tokenizer_class_from_name(
            declared.removesuffix("Fast")
        )
    if tokenizer_class is not None and _is_byte_level(source_dir / "tokenizer.json"):
        # LlamaTokenizer hard-codes SentencePiece pre-tokenisation; Llama-3 style byte-level files need the
        # generic backend, exactly as AutoTokenizer decides for them.
        tokenizer_class = None
    if tokenizer_class is not None:
        # Not AutoTokenizer: for model_type "llava" transformers 5 forces TokenizersBackend, which builds a
        # SentencePiece-only folder (liuhaotian's layout) into a tokenizer that splits words differently.
        tokenizer = tokenizer_class.from_pretrained(str(source_dir))
    else:
        tokenizer = AutoTokenizer.from_pretrained(str(source_dir))
    added: list[str] = []
    # <image> first, so it gets id == original vocab size (32000 for LLaVA-1.5), as in llava-hf.
    if IMAGE_TOKEN not in tokenizer.get_vocab():
        tokenizer.add_tokens(AddedToken(IMAGE_TOKEN, special=True, normalized=False), special_tokens=True)
        added.append(IMAGE_TOKEN)
    if tokenizer.pad_token is None:
        tokenizer.add_special_tokens({"pad_token": PAD_TOKEN})
        added.append(PAD_TOKEN)
    return tokenizer, tuple(added)


def _is_byte_level(tokenizer_json: Path) -> bool:
    if not tokenizer_json.is_file():
        return False
    data = _read_json(tokenizer_json)
    return '"ByteLevel"' in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])


def _resize_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Grows an embedding / lm_head matrix to ``rows``; new rows are the mean of the old ones."""
    if tensor.shape[0] == rows:
        return tensor
    # Mean rows keep the new tokens' logits and embeddings in-distribution (Hewitt, "Initializing new word
    # embeddings"); computed in float32 so a float16 sum over 32k rows does not overflow.
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)


def _round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


# --------------------------------------------------------------------------------------------- writing


_SAFETENSORS_NAMES = {dtype: name for name, dtype in _SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class _PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class _ShardWriter:
    """Writes planned tensors into safetensors shards of at most ``max_bytes`` as they arrive, one at a time.

    Every tensor's name, shape and dtype is known before its data is read, so each shard's header (with the byte
    range of every tensor) is written first and a tensor goes to its own range the moment it arrives: the converter
    holds one tensor, not a shard, whatever ``max_bytes`` is.
    """

    def __init__(self, folder: Path, max_bytes: int, layout: Sequence[_PlannedTensor]) -> None:
        self.folder = folder
        self.total_bytes = sum(tensor.nbytes for tensor in layout)
        groups: list[list[_PlannedTensor]] = [[]]
        for tensor in layout:
            if groups[-1] and sum(t.nbytes for t in groups[-1]) + tensor.nbytes > max_bytes:
                groups.append([])
            groups[-1].append(tensor)
        self.shards: list[tuple[Path, list[str]]] = []
        self.place: dict[str, tuple[Path, int, _PlannedTensor]] = {}
        for number, group in enumerate(groups):
            path = folder / f"shard-{number:05d}.partial"
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
            offset = 0
            for tensor in group:
                header[tensor.name] = {
                    "dtype": _SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                    "data_offsets": [offset, offset + tensor.nbytes],
                }
                offset += tensor.nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)
            with open(path, "wb") as handle:
                handle.write(len(encoded).to_bytes(8, "little") + encoded)
                handle.truncate(8 + len(encoded) + offset)
            start = 8 + len(encoded)
            for tensor in group:
                self.place[tensor.name] = (path, start + header[tensor.name]["data_offsets"][0], tensor)
            self.shards.append((path, [tensor.name for tensor in group]))
        self.written: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        path, offset, planned = self.place[name]
        if tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise RuntimeError(f"{name}: planned {planned.shape} {planned.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(memoryview(data))
        self.written.add(name)

    def finish(self) -> tuple[str, ...]:
        """Gives the shards their final names and writes the index."""
        missing = sorted(set(self.place) - self.written)
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[:3]}")
        count = len(self.shards)
        names = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        weight_map: dict[str, str] = {}
        for (path, keys), name in zip(self.shards, names, strict=True):
            path.rename(self.folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return tuple(names)


def _planned_layout(plan: _Plan, out_dtype: torch.dtype, vocab_rows: int) -> list[_PlannedTensor]:
    """Every output tensor, in the order the converter produces it, with its final shape and dtype."""
    layout = []
    for _path, _pickled, pairs in plan.files:
        for _key, name in pairs:
            source_dtype = plan.source_dtypes[name]
            if source_dtype is None:
                raise ValueError(f"tensor {name} has a dtype safetensors does not name; cannot convert it")
            shape = plan.shapes[name]
            if name in _RESIZED:
                shape = (vocab_rows, *shape[1:])
            layout.append(_PlannedTensor(name, tuple(shape), out_dtype if source_dtype.is_floating_point else source_dtype))
    return layout


def _publish(tmp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Moves the finished folder into place; an existing out_dir is replaced only once the new one is complete."""
    if not out_dir.exists():
        tmp_dir.rename(out_dir)
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} appeared during the conversion; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(backup)
    try:
        tmp_dir.rename(out_dir)
    except BaseException:
        backup.rename(out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


# --------------------------------------------------------------------------------------------- public API


def convert_original_llava(
    source_dir: str | os.PathLike[str],
    out_dir: str | os.PathLike[str],
    *,
    vision_tower_dir: str | os.PathLike[str] | None = None,
    allow_pickle: bool = False,
    overwrite: bool = False,
    max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE,
    dtype: torch.dtype | str | None = None,
) -> ConversionReport:
    """Convert an original LLaVA-1.5 checkpoint folder into an HF ``LlavaForConditionalGeneration`` folder.

    Tensors are streamed one at a time from the source files, each written straight to its place in its output
    shard, so peak memory stays near the largest tensor (the embedding matrix while it is resized), whatever
    ``max_shard_size`` is. Everything is written to a
    hidden temporary folder next to ``out_dir`` that is renamed into place at the end; on any error it is
    removed, so ``out_dir`` is either complete or untouched.

    Args:
        source_dir: folder with the original ``config.json`` (``LlavaLlamaForCausalLM``), weights and tokenizer.
        out_dir: folder to create. It must not exist unless ``overwrite`` is True.
        vision_tower_dir: local CLIP folder (``CLIPModel`` or ``CLIPVisionModel``, safetensors) to take the
            vision tower from. When None, the repo named by ``config.mm_vision_tower`` is fetched with
            ``huggingface_hub.snapshot_download`` (honouring ``HF_ENDPOINT``). If the checkpoint carries the
            vision tower itself, its weights win and only the CLIP config is read.
        allow_pickle: accept PyTorch ``.bin`` pickle weights (read with ``torch.load(weights_only=True)``).
        overwrite: replace an existing ``out_dir`` (only after the new folder is complete).
        max_shard_size: largest output shard, in bytes or as a string such as ``"5GB"``.
        dtype: dtype of the output tensors; None keeps the language model's dtype (the vision tower is cast
            to it, as the original LLaVA code does at load time).

    Returns:
        A :class:`ConversionReport` describing the written folder.

    Raises:
        FileNotFoundError: missing source folder, config, tokenizer, weights or vision tower.
        FileExistsError: ``out_dir`` exists and ``overwrite`` is False.
        ValueError: not an original Llama-based LLaVA checkpoint, unsupported projector or LLaVA variant,
            pickle weights without ``allow_pickle``, or tensors that do not fit the HF model.
    """
    from transformers import CLIPVisionConfig

    source = Path(source_dir).expanduser()
    out = Path(out_dir).expanduser()
    clip_override = Path(vision_tower_dir).expanduser() if vision_tower_dir is not None else None
    max_bytes = _parse_size(max_shard_size)
    out_dtype = _resolve_dtype(dtype)

    if not source.is_dir():
        raise FileNotFoundError(f"source checkpoint folder {source} does not exist")
    config_path = source / "config.json"
    if not config_path.is_file():
        raise FileNotFoundError(f"{source} has no config.json; is it a LLaVA checkpoint folder?")
    for read_from in [source] + ([clip_override] if clip_override is not None else []):
        # --overwrite replaces out_dir, so it must neither be nor contain nor sit inside a folder being read.
        a, b = out.resolve(), read_from.resolve()
        if a == b or b.is_relative_to(a) or a.is_relative_to(b):
            raise ValueError(f"out_dir {out} overlaps {read_from}, which is being read; choose another out_dir")
    if out.exists() and not overwrite:
        raise FileExistsError(f"{out} already exists; pass overwrite=True (CLI: --overwrite) to replace it")

    original = _read_json(config_path)
    settings = _check_original_config(original, source)

    # Everything that can be rejected is checked before anything is downloaded or written.
    llava_files, llava_pickled = weight_files(source, allow_pickle=allow_pickle, what="checkpoint")
    plan = _Plan()
    ckpt_has_vision = _plan_llava(llava_files, llava_pickled, plan)
    if not plan.shapes.keys() >= _RESIZED:
        raise ValueError(f"{source} lacks model.embed_tokens.weight or lm_head.weight; not a complete LLaVA checkpoint")

    clip_dir, vision_label = _vision_tower_folder(
        settings, clip_override, need_weights=not ckpt_has_vision, allow_pickle=allow_pickle
    )
    if ckpt_has_vision:
        vision_label = "checkpoint"
    else:
        clip_files, clip_pickled = weight_files(clip_dir, allow_pickle=allow_pickle, what="vision tower")
        _plan_clip(clip_files, clip_pickled, plan)

    vision_config = CLIPVisionConfig.from_pretrained(str(clip_dir))
    if settings.mm_hidden_size is not None and settings.mm_hidden_size != vision_config.hidden_size:
        raise ValueError(
            f"mm_hidden_size {settings.mm_hidden_size} in the checkpoint config does not match the vision tower's "
            f"hidden_size {vision_config.hidden_size} ({clip_dir})"
        )
    image_kwargs = _image_processor_kwargs(clip_dir, vision_config.image_size)

    tokenizer, added_tokens = _prepare_tokenizer(source)
    old_rows = plan.shapes["language_model.model.embed_tokens.weight"][0]
    new_rows = _round_up(max(len(tokenizer), old_rows), VOCAB_MULTIPLE)
    source_dtype = plan.source_dtypes["language_model.model.embed_tokens.weight"]
    out_dtype = out_dtype or source_dtype or torch.float32

    config, text_keys = _build_config(original, settings, vision_config, tokenizer, new_rows, out_dtype)
    _check_plan(plan, _expected_shapes(config))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp_dir.mkdir()
    try:
        writer = _ShardWriter(tmp_dir, max_bytes, _planned_layout(plan, out_dtype, new_rows))
        for path, pickled, pairs in plan.files:
            names = dict(pairs)
            logger.info("converting %s (%d tensors)", path.name, len(pairs))
            for key, tensor in _iter_tensors(path, pickled, [key for key, _ in pairs]):
                name = names[key]
                tensor = tensor.to(out_dtype) if tensor.is_floating_point() else tensor
                if name in _RESIZED:
                    tensor = _resize_rows(tensor, new_rows)
                writer.add(name, tensor)
                del tensor
        shards = writer.finish()

        config.save_pretrained(str(tmp_dir))
        _write_generation_config(source, tmp_dir, tokenizer)
        _write_processor(tmp_dir, source, tokenizer, image_kwargs, settings, vision_config.patch_size)
        _publish(tmp_dir, out, overwrite)
    except BaseException:
        shutil.rmtree(tmp_dir, ignore_errors=True)
        raise

    unused = sorted(set(original) - settings.consumed_keys - text_keys)
    report = ConversionReport(
        out_dir=out,
        shards=shards,
        num_tensors=len(plan.shapes),
        total_bytes=writer.total_bytes,
        dtype=str(out_dtype).replace("torch.", ""),
        vision_tower_source=vision_label,
        old_vocab_rows=old_rows,
        new_vocab_rows=new_rows,
        tokenizer_size=len(tokenizer),
        added_tokens=added_tokens,
        image_token_index=config.image_token_index,
        pad_token_id=tokenizer.pad_token_id,
        vision_feature_layer=settings.vision_feature_layer,
        vision_feature_select_strategy=settings.strategy,
        pad_to_square=settings.pad_to_square,
        dropped_keys=tuple(plan.dropped),
        unused_config_keys=tuple(unused),
    )
    logger.info("wrote %s: %d tensors in %d shard(s)", out, report.num_tensors, len(shards))
    return report


def _build_config(
    original: dict[str, Any],
    settings: _Settings,
    vision_config: Any,
    tokenizer: Any,
    vocab_rows: int,
    dtype: torch.dtype,
) -> tuple[Any, set[str]]:
    """The LlavaConfig, and which original keys went into its text_config."""
    from transformers import LlamaConfig, LlavaConfig

    tie = bool(original.get("tie_word_embeddings", False))
    text_kwargs, text_keys = _text_config_kwargs(original)
    text_kwargs.update(vocab_size=vocab_rows, pad_token_id=tokenizer.pad_token_id, tie_word_embeddings=tie)
    num_patches = (vision_config.image_size // vision_config.patch_size) ** 2
    config = LlavaConfig(
        vision_config=vision_config,
        text_config=LlamaConfig(**text_kwargs),
        image_token_index=tokenizer.convert_tokens_to_ids(IMAGE_TOKEN),
        # "full" keeps CLS, so one more placeholder per image.
        image_seq_length=num_patches + (1 if settings.strategy == "full" else 0),
        projector_hidden_act=settings.projector_act,
        vision_feature_select_strategy=settings.strategy,
        vision_feature_layer=settings.vision_feature_layer,
        multimodal_projector_bias=True,
        tie_word_embeddings=tie,
    )
    config.dtype = dtype
    config.architectures = ["LlavaForConditionalGeneration"]
    return config, text_keys


def _check_plan(plan: _Plan, expected: dict[str, tuple[int, ...]]) -> None:
    """Fails before anything is written if the planned tensors do not match the HF model one to one."""
    missing = sorted(set(expected) - set(plan.shapes))
    extra = sorted(set(plan.shapes) - set(expected))
    if missing or extra:
        raise ValueError(
            "the checkpoint does not fit LlavaForConditionalGeneration: "
            f"{len(missing)} tensors missing (e.g. {missing[:5]}), {len(extra)} unexpected (e.g. {extra[:5]})"
        )
    for name, shape in plan.shapes.items():
        want = expected[name]
        # Embedding rows only grow (new tokens + padding to a multiple of 64).
        fits = shape[1:] == want[1:] and shape[0] <= want[0] if name in _RESIZED else shape == want
        if not fits:
            raise ValueError(f"tensor {name} has shape {list(shape)}, the HF model needs {list(want)}")


def _write_processor(
    folder: Path, source: Path, tokenizer: Any, image_kwargs: dict[str, Any], settings: _Settings, patch_size: int
) -> None:
    from transformers import LlavaProcessor

    processor = LlavaProcessor(
        image_processor=_build_image_processor(image_kwargs, settings.pad_to_square),
        tokenizer=tokenizer,
        patch_size=patch_size,
        vision_feature_select_strategy=settings.strategy,
        chat_template=LLAVA_15_CHAT_TEMPLATE,
        image_token=IMAGE_TOKEN,
        num_additional_image_tokens=1,  # CLIP's CLS token; the "default" strategy drops it again
    )
    processor.save_pretrained(str(folder))
    # Keep the SentencePiece model beside tokenizer.json, as llava-hf repos do, for tools that read only it.
    # The source's special_tokens_map / added_tokens files are not copied: they predate <image> and <pad>.
    if (source / "tokenizer.model").is_file() and not (folder / "tokenizer.model").exists():
        shutil.copy2(source / "tokenizer.model", folder / "tokenizer.model")


def _write_generation_config(source: Path, out: Path, tokenizer: Any) -> None:
    from transformers import GenerationConfig

    ids = {
        "bos_token_id": tokenizer.bos_token_id,
        "eos_token_id": tokenizer.eos_token_id,
        "pad_token_id": tokenizer.pad_token_id,
    }
    ids = {key: value for key, value in ids.items() if value is not None}
    generation = None
    if (source / "generation_config.json").is_file():
        try:
            generation = GenerationConfig.from_pretrained(str(source))
        except (ValueError, OSError) as err:
            # Old generation configs can fail 5.x validation; the token ids are what matters for LLaVA.
            logger.warning("ignoring the source generation_config.json: %s", err)
    if generation is None:
        generation = GenerationConfig(**ids)
    else:
        for key, value in ids.items():
            setattr(generation, key, value)
    generation.save_pretrained(str(out))


# --------------------------------------------------------------------------------------------- CLI


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowcut_hf.export.convert SOURCE OUT [--vision-tower DIR] [--allow-pickle] ...``."""
    parser = argparse.ArgumentParser(
        prog="python -m flowcut_hf.export.convert",
        description="Convert an original LLaVA-1.5 checkpoint into an HF LlavaForConditionalGeneration folder.",
    )
    parser.add_argument("source_dir", type=Path)
    parser.add_argument("out_dir", type=Path)
    parser.add_argument(
        "--vision-tower", type=Path, default=None, help="local CLIP folder (default: fetch mm_vision_tower)"
    )
    parser.add_argument("--allow-pickle", action="store_true", help="accept PyTorch .bin pickle weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--max-shard-size", default=DEFAULT_MAX_SHARD_SIZE)
    parser.add_argument("--dtype", default=None, help="output dtype, e.g. float16 (default: keep)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        report = convert_original_llava(
            args.source_dir,
            args.out_dir,
            vision_tower_dir=args.vision_tower,
            allow_pickle=args.allow_pickle,
            overwrite=args.overwrite,
            max_shard_size=args.max_shard_size,
            dtype=args.dtype,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps(dataclasses.asdict(report), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
