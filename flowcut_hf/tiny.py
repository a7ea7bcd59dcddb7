"""Building blocks of the built-in random models: byte-level tokenizers, sharpened random vision attention, synthetic
test images. Every family's adapter builds its own models from them (``flowcut_hf/families/*/builtin.py``), with
the real architectures and geometry and random weights, so the demo, the tests and the benchmark download nothing.
"""

from __future__ import annotations

import numpy as np
import torch
from PIL import Image
from tokenizers import Tokenizer, decoders, models, pre_tokenizers
from transformers.tokenization_utils_tokenizers import TokenizersBackend

CLIP_IMAGE_MEAN = [0.48145466, 0.4578275, 0.40821073]
CLIP_IMAGE_STD = [0.26862954, 0.26130258, 0.27577711]
SIGLIP_IMAGE_MEAN = SIGLIP_IMAGE_STD = [0.5, 0.5, 0.5]

# "USER: <image>\n{prompt} ASSISTANT:", the template of the Vicuna-based models.
USER_ASSISTANT_CHAT_TEMPLATE = (
    "{% for message in messages %}"
    "{% if message['role'] == 'system' %}{{ message['content'] if message['content'] is string else "
    "message['content'] | selectattr('type', 'equalto', 'text') | map(attribute='text') | join(' ') }} "
    "{% else %}{{ message['role'].upper() }}: "
    "{% if message['content'] is string %}{{ message['content'] }}"
    "{% else %}{% for item in message['content'] %}"
    "{% if item['type'] == 'image' %}<image>\n{% elif item['type'] == 'text' %}{{ item['text'] }}{% endif %}"
    "{% endfor %}{% endif %} {% endif %}"
    "{% endfor %}"
    "{% if add_generation_prompt %}ASSISTANT:{% endif %}"
)

SPECIAL_TOKENS = ["<pad>", "<s>", "</s>", "<unk>"]
IMAGE_TOKEN = "<image>"


def byte_level_tokenizer(
    added_tokens: list[str], eos_token: str, extra_special_tokens: dict[str, str], chat_template: str
) -> TokenizersBackend:
    """A byte-level tokenizer (every byte is a token, no merges): ``<pad>`` 0, ``<s>`` 1, ``</s>`` 2, ``<unk>`` 3,
    the 256 bytes, then ``added_tokens`` (special) in order. Left padding, as generation needs."""
    byte_alphabet = sorted(pre_tokenizers.ByteLevel.alphabet())
    vocab = {token: index for index, token in enumerate(SPECIAL_TOKENS + byte_alphabet + added_tokens)}
    backend = Tokenizer(models.BPE(vocab=vocab, merges=[], unk_token="<unk>"))
    backend.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    backend.decoder = decoders.ByteLevel()
    tokenizer = TokenizersBackend(
        tokenizer_object=backend,
        bos_token="<s>",
        eos_token=eos_token,
        unk_token="<unk>",
        pad_token="<pad>",
        extra_special_tokens=extra_special_tokens,
        padding_side="left",
        chat_template=chat_template,
    )
    tokenizer.add_special_tokens({"additional_special_tokens": added_tokens})
    return tokenizer


def build_tiny_tokenizer() -> TokenizersBackend:
    """A byte-level tokenizer with an ``<image>`` placeholder, last (260), and the USER/ASSISTANT chat template."""
    return byte_level_tokenizer([IMAGE_TOKEN], "</s>", {"image_token": IMAGE_TOKEN}, USER_ASSISTANT_CHAT_TEMPLATE)


# Random CLIP weights give near-uniform attention, so FlowCut would prune almost nothing before its final cut.
# Scaling the query and key projection weights makes CLS attention peaked, as in a trained CLIP; at 16 the schedule
# looks like the one the authors' code produced on a random CLIP (577 -> 490 -> 424 -> ... -> 65).
QK_WEIGHT_SCALE = 16.0


def with_tokenizer_ids(config, tokenizer: TokenizersBackend):
    """Sets ``config``'s image, pad, bos and eos token ids to ``tokenizer``'s, in place, and returns it."""
    config.image_token_id = tokenizer.convert_tokens_to_ids(IMAGE_TOKEN)
    text_config = config.text_config
    text_config.pad_token_id = tokenizer.pad_token_id
    text_config.bos_token_id = tokenizer.bos_token_id
    text_config.eos_token_id = tokenizer.eos_token_id
    return config


def set_generation_token_ids(model, tokenizer: TokenizersBackend) -> None:
    """``generate()`` pads, stops and starts with ``tokenizer``'s special tokens."""
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.eos_token_id = tokenizer.eos_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id


def sharpen_vision_attention(vision_tower: torch.nn.Module, qk_weight_scale: float) -> None:
    """Scales the query and key projections of ``vision_tower`` (separate ``q_proj``/``k_proj``, or the query and key
    rows of a fused ``qkv``), so that its random attention is peaked as a trained one is; the values stay."""
    with torch.no_grad():
        for name, parameter in vision_tower.named_parameters():
            if name.endswith(("q_proj.weight", "k_proj.weight")):
                parameter.mul_(qk_weight_scale)
            elif name.endswith("qkv.weight"):
                parameter[: 2 * (parameter.shape[0] // 3)].mul_(qk_weight_scale)


def build_random_model(model_class, config, tokenizer: TokenizersBackend, seed: int, qk_weight_scale: float):
    """A random ``model_class(config)`` in eval mode, with sharpened vision attention (``model.model.vision_tower``)
    and the tokenizer's ``<image>``, pad, bos and eos ids."""
    if config.text_config.vocab_size < len(tokenizer):
        raise ValueError(f"the text model's vocabulary ({config.text_config.vocab_size}) is smaller than the tokenizer's")
    with_tokenizer_ids(config, tokenizer)
    torch.manual_seed(seed)
    model = model_class(config).eval()
    sharpen_vision_attention(model.model.vision_tower, qk_weight_scale)
    set_generation_token_ids(model, tokenizer)
    return model


def synthetic_image(seed: int = 0, size: tuple[int, int] = (336, 336)) -> Image.Image:
    """A deterministic RGB test image: smooth colour gradients plus a few bright blobs."""
    rng = np.random.default_rng(seed)
    height, width = size
    y, x = np.mgrid[0:height, 0:width].astype(np.float32)
    image = np.stack([x / width, y / height, 0.5 + 0.5 * np.sin((x + y) / 37.0)], axis=-1) * 160
    for _ in range(4):
        cy, cx = rng.integers(0, height), rng.integers(0, width)
        radius = rng.integers(height // 16, height // 6)
        blob = (y - cy) ** 2 + (x - cx) ** 2 < radius**2
        image[blob] = rng.integers(0, 256, size=3)
    return Image.fromarray(image.clip(0, 255).astype(np.uint8))


def image_only_processor_class(stock_class: type) -> type:
    """``stock_class`` (a processor with a video processor) usable without one: without torchvision transformers
    cannot even look the video processor class up, so the tiny processors leave it out."""

    class ImageOnlyProcessor(stock_class):
        def check_argument_for_proper_class(self, attribute_name, arg):
            if attribute_name == "video_processor" and arg is None:
                return None
            return super().check_argument_for_proper_class(attribute_name, arg)

    ImageOnlyProcessor.__name__ = ImageOnlyProcessor.__qualname__ = stock_class.__name__
    return ImageOnlyProcessor
