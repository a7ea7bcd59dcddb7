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

import logging
import os
import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from huggingface_hub import snapshot_download

from ...export.weights import (
    PlannedTensor, ShardWriter, iter_tensors, list_tensors, parse_size, publish_folder, read_json_object, resize_rows,
    resolve_float_dtype, round_up, weight_files,
)
from .original_config import (
    VOCAB_MULTIPLE, Settings, build_config, check_original_config, image_processor_kwargs, is_hf_llava, is_original_llava,
    prepare_tokenizer, write_generation_config, write_processor,
)

logger = logging.getLogger(__name__)

DEFAULT_MAX_SHARD_SIZE = "5GB"

__all__ = ["ConversionReport", "convert_original_llava", "is_hf_llava", "is_original_llava"]

_RESIZED = frozenset({"language_model.model.embed_tokens.weight", "language_model.lm_head.weight"})
# CLIPVisionModel top-level modules when saved without the `vision_model.` prefix (transformers >= 5 from scratch).
_BARE_CLIP_VISION_MODULES = {"embeddings", "encoder", "pre_layrnorm", "post_layernorm"}
# Buffers some checkpoints carry that the HF model recomputes; keeping them would be "unexpected keys".
_IGNORABLE_SUFFIXES = (".rotary_emb.inv_freq", ".position_ids")


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
        for key, (shape, dtype) in list_tensors(path, pickled).items():
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
        for key, (shape, dtype) in list_tensors(path, pickled).items():
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
    settings: Settings, vision_tower_dir: Path | None, *, need_weights: bool, allow_pickle: bool
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


# --------------------------------------------------------------------------------------------- writing


def _planned_layout(plan: _Plan, out_dtype: torch.dtype, vocab_rows: int) -> list[PlannedTensor]:
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
            layout.append(PlannedTensor(name, tuple(shape), out_dtype if source_dtype.is_floating_point else source_dtype))
    return layout


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
    max_bytes = parse_size(max_shard_size)
    out_dtype = resolve_float_dtype(dtype)

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

    original = read_json_object(config_path)
    settings = check_original_config(original, source)

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
    image_kwargs = image_processor_kwargs(clip_dir, vision_config.image_size)

    tokenizer, added_tokens = prepare_tokenizer(source)
    old_rows = plan.shapes["language_model.model.embed_tokens.weight"][0]
    new_rows = round_up(max(len(tokenizer), old_rows), VOCAB_MULTIPLE)
    source_dtype = plan.source_dtypes["language_model.model.embed_tokens.weight"]
    out_dtype = out_dtype or source_dtype or torch.float32

    config, text_keys = build_config(original, settings, vision_config, tokenizer, new_rows, out_dtype)
    _check_plan(plan, _expected_shapes(config))

    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_dir = out.with_name(f".{out.name}.partial-{uuid.uuid4().hex[:8]}")
    tmp_dir.mkdir()
    try:
        writer = ShardWriter(tmp_dir, max_bytes, _planned_layout(plan, out_dtype, new_rows))
        for path, pickled, pairs in plan.files:
            names = dict(pairs)
            logger.info("converting %s (%d tensors)", path.name, len(pairs))
            for key, tensor in iter_tensors(path, pickled, [key for key, _ in pairs]):
                name = names[key]
                tensor = tensor.to(out_dtype) if tensor.is_floating_point() else tensor
                if name in _RESIZED:
                    tensor = resize_rows(tensor, new_rows)
                writer.add(name, tensor)
                del tensor
        shards = writer.finish()

        config.save_pretrained(str(tmp_dir))
        write_generation_config(source, tmp_dir, tokenizer)
        write_processor(tmp_dir, source, tokenizer, image_kwargs, settings, vision_config.patch_size)
        publish_folder(tmp_dir, out, overwrite)
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
