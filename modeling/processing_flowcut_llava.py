"""LLaVA processor that emits as many ``<image>`` placeholders as a FlowCut model keeps per image."""

from __future__ import annotations

import copy
from typing import Any

from transformers import LlavaProcessor

from .configuration_flowcut_llava import DEFAULT_TARGET_NUM, validate_target_num


class FlowCutLlavaProcessor(LlavaProcessor):
    r"""A [`LlavaProcessor`] for FlowCut models.

    Args:
        flowcut_target_num (`int`, defaults to 64):
            Visual tokens the model keeps per image; must equal the model's `config.flowcut_target_num`.
        flowcut_enabled (`bool`, defaults to `True`):
            Must equal the model's `config.flowcut_enabled`; when False, the stock count is emitted.
        original_llava_tokenization (`bool`, defaults to `False`):
            Tokenize the text between images piece by piece, as the original LLaVA code (`tokenizer_image_token`)
            does, so that a model converted from the original format gets the token ids it was trained on: each piece
            after an image starts a new SentencePiece sequence (a prefix "▁"). Off for models of the HF layout.
    """

    _auto_class = "AutoProcessor"

    # Every parent parameter is re-declared by name: ProcessorMixin serialises only the named ones.
    def __init__(
        self,
        image_processor=None,
        tokenizer=None,
        patch_size=None,
        vision_feature_select_strategy=None,
        chat_template=None,
        image_token="<image>",
        num_additional_image_tokens=0,
        flowcut_target_num: int = DEFAULT_TARGET_NUM,
        flowcut_enabled: bool = True,
        original_llava_tokenization: bool = False,
        **kwargs,
    ):
        self.flowcut_target_num = validate_target_num(flowcut_target_num)
        self.flowcut_enabled = bool(flowcut_enabled)
        self.original_llava_tokenization = bool(original_llava_tokenization)
        super().__init__(
            image_processor=image_processor,
            tokenizer=tokenizer,
            patch_size=patch_size,
            vision_feature_select_strategy=vision_feature_select_strategy,
            chat_template=chat_template,
            image_token=image_token,
            num_additional_image_tokens=num_additional_image_tokens,
            **kwargs,
        )

    def __call__(self, *args, **kwargs):
        if not self.original_llava_tokenization:
            return super().__call__(*args, **kwargs)
        # A shallow copy carries the piecewise tokenizer, so the processor itself stays unchanged (and thread-safe).
        chunked = copy.copy(self)
        chunked.tokenizer = ImageChunkTokenizer(self.tokenizer, self.image_token)
        return LlavaProcessor.__call__(chunked, *args, **kwargs)

    def to_dict(self) -> dict:
        data = super().to_dict()
        # Name the stock class here (auto_map still points at this one): without trust_remote_code, AutoProcessor
        # then falls back to the stock LlavaProcessor, which matches the stock model it loads, instead of failing.
        data["processor_class"] = "LlavaProcessor"
        return data

    def _retained_count(self, unpruned_count: int) -> int:
        if not self.flowcut_enabled:
            return unpruned_count
        return min(validate_target_num(self.flowcut_target_num), unpruned_count)

    def replace_image_token(self, image_inputs: dict, image_idx: int, **kwargs) -> str:
        unpruned = len(super().replace_image_token(image_inputs, image_idx, **kwargs)) // len(self.image_token)
        return self.image_token * self._retained_count(unpruned)

    def _get_num_multimodal_tokens(self, image_sizes=None, **kwargs):
        data = super()._get_num_multimodal_tokens(image_sizes=image_sizes, **kwargs)
        if image_sizes is not None:
            data.num_image_tokens = [self._retained_count(count) for count in data.num_image_tokens]
        return data


class ImageChunkTokenizer:
    """A tokenizer view that encodes text the way the original LLaVA's ``tokenizer_image_token`` does: split at the
    image token, each piece encoded as a sequence of its own (no special tokens), joined by the image token's id, with
    the tokenizer's BOS in front. Everything else is the wrapped tokenizer's."""

    def __init__(self, tokenizer: Any, image_token: str):
        self.tokenizer = tokenizer
        self.image_token = image_token
        self.image_token_id = tokenizer.convert_tokens_to_ids(image_token)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.tokenizer, name)

    def encode_pieces(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = []
        bos = self.tokenizer.bos_token_id
        if add_special_tokens and bos is not None and self.tokenizer("x").input_ids[:1] == [bos]:
            ids.append(bos)
        for index, piece in enumerate(text.split(self.image_token)):
            if index:
                ids.append(self.image_token_id)
            if piece:
                ids.extend(self.tokenizer(piece, add_special_tokens=False).input_ids)
        return ids

    def __call__(self, text: str | list[str], **kwargs) -> Any:
        if kwargs.pop("truncation", None) not in (None, False, "do_not_truncate"):
            raise ValueError(
                "truncation is not supported with original_llava_tokenization; shorten the prompt, or set the "
                "processor's original_llava_tokenization=False to tokenize as the HF-layout LLaVA processors do."
            )
        add_special_tokens = kwargs.pop("add_special_tokens", True)
        padding_options = ("padding", "max_length", "pad_to_multiple_of", "padding_side", "return_attention_mask", "return_tensors")
        padding = {key: kwargs.pop(key) for key in padding_options if key in kwargs}
        texts = [text] if isinstance(text, str) else list(text)
        encoded = self.tokenizer.pad({"input_ids": [self.encode_pieces(t, add_special_tokens) for t in texts]}, **padding)
        if isinstance(text, str) and padding.get("return_tensors") is None:
            encoded = encoded.__class__({key: value[0] for key, value in encoded.items()})
        return encoded


__all__ = ["FlowCutLlavaProcessor", "ImageChunkTokenizer"]
