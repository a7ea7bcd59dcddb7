"""The config, tokenizer and processor of an original-layout LLaVA-1.5 checkpoint (haotian-liu's
``LlavaLlamaForCausalLM``), translated to the HF layout for :mod:`.original`, which converts the weights."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import logging
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from ...export.weights import read_json_object

logger = logging.getLogger(__name__)

IMAGE_TOKEN = "<image>"
PAD_TOKEN = "<pad>"
# llava-hf pads the vocabulary to a multiple of 64 (tensor-core friendly matmuls); users compare against it.
VOCAB_MULTIPLE = 64

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
_ORIGINAL_MODEL_TYPES = {"llava", "llava_llama"}


def _other_original_backbones(config_dict: dict[str, Any]) -> list[str]:
    """The original repo's other backbones (``LlavaMistralForCausalLM``, model_type ``llava_mpt``, ...) a config names:
    they are recognised so that the error can say why they are refused."""
    architectures = config_dict.get("architectures") or []
    other = [a for a in architectures if a.startswith("Llava") and a.endswith("ForCausalLM") and a not in _ORIGINAL_ARCHITECTURES]
    model_type = str(config_dict.get("model_type") or "")
    if model_type.startswith("llava_") and model_type not in _ORIGINAL_MODEL_TYPES and "text_config" not in config_dict:
        other.append(model_type)
    return other
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
_SELECT_FEATURE_TO_STRATEGY = {"patch": "default", "cls_patch": "full"}
_SUPPORTED_PROJECTORS = {"mlp2x_gelu": "gelu"}

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
        and not _other_original_backbones(config_dict)
    )


def is_hf_llava(config_dict: dict[str, Any]) -> bool:
    """True for a transformers-format LLaVA ``config.json`` (``LlavaForConditionalGeneration`` layout)."""
    if is_original_llava(config_dict) or _other_original_backbones(config_dict):
        return False
    architectures = config_dict.get("architectures") or []
    return config_dict.get("model_type") == "llava" or "LlavaForConditionalGeneration" in architectures


@dataclass(frozen=True)
class Settings:
    """The multimodal choices of an original config, checked and translated to HF names."""

    vision_tower_name: str | None
    mm_hidden_size: int | None
    vision_feature_layer: int
    strategy: str
    projector_act: str
    pad_to_square: bool
    consumed_keys: frozenset[str]


def check_original_config(cfg: dict[str, Any], source_dir: Path) -> Settings:
    if not is_original_llava(cfg):
        architectures = cfg.get("architectures") or []
        if is_hf_llava(cfg):
            raise ValueError(
                f"{source_dir} already holds a transformers-format LLaVA checkpoint "
                f"(architectures={architectures}); it needs no conversion"
            )
        other = _other_original_backbones(cfg)
        if other:
            raise ValueError(
                f"{source_dir} is an original LLaVA checkpoint with a non-Llama backbone "
                f"({other}); only LlavaLlamaForCausalLM is supported"
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
            f"image_aspect_ratio {aspect!r} is anyres (LLaVA-1.6) tiling; this converter handles LLaVA-1.5 only"
        )
    merge = cfg.get("mm_patch_merge_type", "flat")
    if merge != "flat":
        raise ValueError(f"mm_patch_merge_type {merge!r} is anyres (LLaVA-1.6); only 'flat' (LLaVA-1.5) is supported")
    for flag in ("mm_use_im_start_end", "mm_use_im_patch_token"):
        if cfg.get(flag):
            raise ValueError(
                f"{flag}=true: the checkpoint expects extra image marker tokens that LlavaForConditionalGeneration "
                f"does not insert; such checkpoints cannot be converted faithfully"
            )

    tower = cfg.get("mm_vision_tower") or cfg.get("vision_tower")
    return Settings(
        vision_tower_name=str(tower) if tower else None,
        mm_hidden_size=cfg.get("mm_hidden_size"),
        vision_feature_layer=select_layer,
        strategy=_SELECT_FEATURE_TO_STRATEGY[select_feature],
        projector_act=_SUPPORTED_PROJECTORS[projector],
        pad_to_square=aspect == "pad",
        consumed_keys=_ORIGINAL_ONLY_KEYS,
    )


def text_config_kwargs(cfg: dict[str, Any]) -> tuple[dict[str, Any], set[str]]:
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


def build_config(
    original: dict[str, Any],
    settings: Settings,
    vision_config: Any,
    tokenizer: Any,
    vocab_rows: int,
    dtype: torch.dtype,
) -> tuple[Any, set[str]]:
    """The LlavaConfig, and which original keys went into its text_config."""
    from transformers import LlamaConfig, LlavaConfig

    tie = bool(original.get("tie_word_embeddings", False))
    text_kwargs, text_keys = text_config_kwargs(original)
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


def image_processor_kwargs(clip_dir: Path, image_size: int) -> dict[str, Any]:
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
        raw = read_json_object(path)
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


def build_image_processor(kwargs: dict[str, Any], pad_to_square: bool) -> Any:
    from transformers.utils import is_torchvision_available

    # Both backends save as "LlavaImageProcessor", so the folder loads the same whichever is installed.
    if is_torchvision_available():
        from transformers import LlavaImageProcessor as processor_class
    else:
        from transformers import LlavaImageProcessorPil as processor_class
    # do_pad pads to square with the mean colour before the CLIP resize + crop, as LLaVA's expand2square does.
    return processor_class(do_pad=pad_to_square, do_resize=True, do_center_crop=True, **kwargs)


# --------------------------------------------------------------------------------------------- tokenizer


def prepare_tokenizer(source_dir: Path) -> tuple[Any, tuple[str, ...]]:
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
        declared = read_json_object(source_dir / "tokenizer_config.json").get("tokenizer_class")
    tokenizer_class = None
    if isinstance(declared, str):
        tokenizer_class = tokenizer_class_from_name(declared) or tokenizer_class_from_name(
            declared.removesuffix("Fast")
        )
    if tokenizer_class is not None and is_byte_level(source_dir / "tokenizer.json"):
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


def is_byte_level(tokenizer_json: Path) -> bool:
    if not tokenizer_json.is_file():
        return False
    data = read_json_object(tokenizer_json)
    return '"ByteLevel"' in json.dumps([data.get("pre_tokenizer"), data.get("decoder")])


def write_processor(
    folder: Path, source: Path, tokenizer: Any, image_kwargs: dict[str, Any], settings: Settings, patch_size: int
) -> None:
    from transformers import LlavaProcessor

    processor = LlavaProcessor(
        image_processor=build_image_processor(image_kwargs, settings.pad_to_square),
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


def write_generation_config(source: Path, out: Path, tokenizer: Any) -> None:
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


