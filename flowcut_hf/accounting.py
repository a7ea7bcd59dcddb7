"""Analytic compute and memory accounting of a vision-language prefill, with pruning.

Everything here is pure Python integer arithmetic on config objects: no
tensors are built and nothing is timed, so the numbers are exact,
deterministic and hardware independent. They are meant to sit next to
measured latencies in benchmark reports, not to replace them.

FLOP convention
---------------
``FLOPs = 2 x (multiply-accumulates)`` of every matrix product in the
forward pass:

* linear layers and the patch-embedding convolution;
* the two attention products, ``Q @ K^T`` and ``softmax(.) @ V``.

Not counted: normalisation layers, activations, softmax, residual adds,
bias adds, rotary / position embeddings, embedding look-ups, and FlowCut's
own token-scoring arithmetic (it reuses attention the encoder already
computed and adds only element-wise and top-k work, which is O(seq) per
layer against the O(seq x hidden^2) counted here). This is the usual
convention of FLOP tables in the token-pruning literature; for a LLaVA-1.5
CLIP layer the omitted element-wise work is roughly 0.4% of the counted
matmul work.

Where a choice had to be made:

* **Causal prefill attention is counted as the full ``seq x seq`` square by
  default.** That is what the eager and SDPA-math kernels actually compute
  (the causal mask is applied after the product), and it makes the count
  independent of the attention backend. ``causal=True`` counts only the
  ``seq * (seq + 1) / 2`` unmasked query/key pairs, which is closer to what
  FlashAttention executes.
* **The LM head is counted on the last position only** (``lm_head_tokens=1``),
  because ``generate()`` passes ``logits_to_keep=1`` for the prefill step.
  Pass ``lm_head_tokens=None`` for a plain ``model(**inputs)`` call, which
  projects every position.
* **Only encoder layers that run are counted.** LLaVA reads its features from
  ``hidden_states[vision_feature_layer]``; FlowCut stops the encoder there,
  so with the default ``-2`` the last CLIP layer never runs (23 of 24).
  Stock Hugging Face LLaVA runs all 24 and discards the last; pass an
  explicit 24-entry schedule to account for that.

Config objects
--------------
Functions taking a ``vision_config`` or ``text_config`` also accept the
enclosing ``LlavaConfig`` (anything with a ``.vision_config`` /
``.text_config`` attribute) and pick the relevant sub-config. Any object with
the right attributes works, so transformers 4 and 5 configs are both fine.
"""

from __future__ import annotations

import operator
from dataclasses import asdict, dataclass, field
from typing import Any, Sequence

__all__ = [
    "AnyresImageTokens",
    "PrefillAccount",
    "PrefillFlops",
    "decoder_layer_flops",
    "next_prefill_account",
    "dtype_nbytes",
    "full_num_image_tokens",
    "full_schedule",
    "kv_cache_bytes",
    "layers_run",
    "llm_prefill_flops",
    "num_patches",
    "prefill_account",
    "projector_flops",
    "vision_encoder_flops",
    "vision_layer_flops",
]


# --------------------------------------------------------------------------- #
# config helpers
# --------------------------------------------------------------------------- #


def _vision_cfg(config: Any) -> Any:
    sub = getattr(config, "vision_config", None)
    return sub if sub is not None else config


def _text_cfg(config: Any) -> Any:
    sub = getattr(config, "text_config", None)
    return sub if sub is not None else config


def _pair(value: Any) -> tuple[int, int]:
    # CLIPVisionConfig types image_size / patch_size as int *or* (h, w).
    if isinstance(value, (list, tuple)):
        if len(value) != 2:
            raise ValueError(f"expected an int or a (height, width) pair, got {value!r}")
        return int(value[0]), int(value[1])
    return int(value), int(value)


def check_count(name: str, value: Any, minimum: int = 0) -> int:
    # operator.index admits numpy / 0-d torch integers (schedules often come
    # from tensors) but refuses floats; bool is refused because a stray True
    # would silently count as 1.
    if isinstance(value, bool):
        raise TypeError(f"{name} must be an int, got bool")
    try:
        value = operator.index(value)
    except TypeError:
        raise TypeError(f"{name} must be an int, got {type(value).__name__}") from None
    if value < minimum:
        raise ValueError(f"{name} must be >= {minimum}, got {value}")
    return value


def _check_schedule(cfg: Any, token_schedule: Sequence[int]) -> list[int]:
    schedule = [check_count(f"token_schedule[{i}]", n, minimum=1) for i, n in enumerate(token_schedule)]
    if len(schedule) > cfg.num_hidden_layers:
        raise ValueError(
            f"token_schedule has {len(schedule)} entries but the encoder has only "
            f"{cfg.num_hidden_layers} layers"
        )
    full = num_patches(cfg) + 1
    for i, n in enumerate(schedule):
        if n > full:
            raise ValueError(f"token_schedule[{i}]={n} exceeds the unpruned length {full}")
    return schedule


def _text_head_dim(text_config: Any) -> int:
    # Llama configs may carry an explicit head_dim that differs from
    # hidden_size // num_attention_heads; trust it when present.
    head_dim = getattr(text_config, "head_dim", None)
    if head_dim is None:
        head_dim = text_config.hidden_size // text_config.num_attention_heads
    return int(head_dim)


def _text_kv_heads(text_config: Any) -> int:
    kv = getattr(text_config, "num_key_value_heads", None)
    return int(kv if kv is not None else text_config.num_attention_heads)


_DTYPE_NBYTES: dict[str, int] = {
    "float64": 8, "fp64": 8, "double": 8,
    "float32": 4, "fp32": 4, "float": 4,
    "float16": 2, "fp16": 2, "half": 2,
    "bfloat16": 2, "bf16": 2,
    "float8_e4m3fn": 1, "float8_e5m2": 1, "fp8": 1,
    "int8": 1, "uint8": 1,
}


def dtype_nbytes(dtype: Any) -> int:
    """Bytes per element of ``dtype``.

    Accepts a ``torch.dtype`` / ``numpy.dtype`` (anything with ``itemsize``),
    a name such as ``"float16"``, ``"bf16"`` or ``"torch.bfloat16"``, or a
    plain positive int taken as the byte count.
    """
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return check_count("dtype", dtype, minimum=1)
    itemsize = getattr(dtype, "itemsize", None)
    if isinstance(itemsize, int) and itemsize > 0:
        return itemsize
    if isinstance(dtype, str):
        key = dtype.lower().removeprefix("torch.")
        if key in _DTYPE_NBYTES:
            return _DTYPE_NBYTES[key]
    raise ValueError(f"cannot determine the element size of dtype {dtype!r}")


# --------------------------------------------------------------------------- #
# vision encoder
# --------------------------------------------------------------------------- #


def num_patches(vision_config: Any) -> int:
    """Number of image patches (576 for CLIP ViT-L/14 at 336 px), excluding CLS."""
    cfg = _vision_cfg(vision_config)
    img_h, img_w = _pair(cfg.image_size)
    p_h, p_w = _pair(cfg.patch_size)
    return (img_h // p_h) * (img_w // p_w)


def layers_run(num_hidden_layers: int, vision_feature_layer: int | Sequence[int] = -2) -> int:
    """How many encoder layers must run to produce ``hidden_states[vision_feature_layer]``.

    ``hidden_states`` has ``num_hidden_layers + 1`` entries (index 0 is the
    embedding output), so index ``i >= 0`` needs ``i`` layers and index
    ``i < 0`` needs ``num_hidden_layers + 1 + i``. For a list of feature
    layers the deepest one decides.
    """
    check_count("num_hidden_layers", num_hidden_layers)
    indices = [vision_feature_layer] if isinstance(vision_feature_layer, int) else list(vision_feature_layer)
    if not indices:
        raise ValueError("vision_feature_layer must not be an empty sequence")
    total = num_hidden_layers + 1
    needed = 0
    for idx in indices:
        if isinstance(idx, bool) or not isinstance(idx, int):
            raise TypeError(f"vision_feature_layer entries must be ints, got {idx!r}")
        if not -total <= idx < total:
            raise ValueError(
                f"vision_feature_layer {idx} out of range for {num_hidden_layers} layers "
                f"(valid: {-total}..{total - 1})"
            )
        needed = max(needed, idx if idx >= 0 else total + idx)
    return needed


def full_schedule(vision_config: Any, vision_feature_layer: int | Sequence[int] | None = None) -> list[int]:
    """The unpruned ``token_schedule``: every layer that runs sees all patches + CLS.

    ``vision_feature_layer`` defaults to the config's own value when a
    ``LlavaConfig`` is passed, else to LLaVA-1.5's ``-2``. For LLaVA-1.5 that
    gives ``[577] * 23``.
    """
    if vision_feature_layer is None:
        vision_feature_layer = getattr(vision_config, "vision_feature_layer", -2)
    cfg = _vision_cfg(vision_config)
    return [num_patches(cfg) + 1] * layers_run(cfg.num_hidden_layers, vision_feature_layer)


def vision_layer_flops(vision_config: Any, seq_len: int) -> int:
    """FLOPs of one CLIP encoder layer on ``seq_len`` tokens (batch 1).

    ``8*n*d^2`` (q, k, v, out projections) ``+ 4*n^2*d`` (QK^T and AV summed
    over heads) ``+ 4*n*d*m`` (fc1, fc2), with ``n`` tokens, width ``d`` and
    MLP width ``m``.
    """
    cfg = _vision_cfg(vision_config)
    n = check_count("seq_len", seq_len)
    d = int(cfg.hidden_size)
    m = int(cfg.intermediate_size)
    projections = 4 * (2 * n * d * d)
    attention = 2 * (2 * n * n * d)
    mlp = 2 * (2 * n * d * m)
    return projections + attention + mlp


def _patch_embedding_flops(cfg: Any) -> int:
    # A stride=kernel conv is one (C*p_h*p_w) -> d matmul per patch; the CLS
    # token and position embeddings are additions, not products.
    p_h, p_w = _pair(cfg.patch_size)
    channels = int(getattr(cfg, "num_channels", 3))
    return 2 * num_patches(cfg) * int(cfg.hidden_size) * channels * p_h * p_w


def vision_encoder_flops(vision_config: Any, token_schedule: Sequence[int], batch_size: int = 1) -> int:
    """FLOPs of the CLIP vision tower for ``batch_size`` images.

    ``token_schedule[i]`` is the sequence length (CLS included) that encoder
    layer ``i`` processed; its length is the number of layers that ran. The
    patch embedding always runs on the full image.
    """
    cfg = _vision_cfg(vision_config)
    batch_size = check_count("batch_size", batch_size)
    schedule = _check_schedule(cfg, token_schedule)
    per_image = _patch_embedding_flops(cfg) + sum(vision_layer_flops(cfg, n) for n in schedule)
    return batch_size * per_image


# --------------------------------------------------------------------------- #
# projector
# --------------------------------------------------------------------------- #


def full_num_image_tokens(config: Any) -> int:
    """Image tokens per image the unpruned LLaVA feeds the LLM (576 for LLaVA-1.5).

    The ``"default"`` feature-select strategy drops CLS, ``"full"`` keeps it.
    """
    strategy = getattr(config, "vision_feature_select_strategy", "default")
    return num_patches(config) + (1 if strategy == "full" else 0)


def projector_flops(config: Any, num_image_tokens: int, batch_size: int = 1) -> int:
    """FLOPs of the LLaVA-1.5 MLP projector (linear -> act -> linear).

    ``config`` must be the ``LlavaConfig`` (both widths are needed).
    ``num_image_tokens`` is per image, ``batch_size`` counts images. When
    several feature layers are concatenated the first linear's input widens
    accordingly, as in ``LlavaMultiModalProjector``.
    """
    num_image_tokens = check_count("num_image_tokens", num_image_tokens)
    batch_size = check_count("batch_size", batch_size)
    feature_layer = getattr(config, "vision_feature_layer", -2)
    num_feature_layers = 1 if isinstance(feature_layer, int) else len(feature_layer)
    d_in = int(config.vision_config.hidden_size) * num_feature_layers
    d_out = int(config.text_config.hidden_size)
    return batch_size * 2 * num_image_tokens * (d_in * d_out + d_out * d_out)


# --------------------------------------------------------------------------- #
# language model
# --------------------------------------------------------------------------- #


def decoder_layer_flops(text_config: Any, seq_len: int, *, causal: bool = False) -> int:
    """FLOPs of one Llama decoder layer over ``seq_len`` tokens (batch 1); see :func:`llm_prefill_flops`."""
    cfg = _text_cfg(text_config)
    n = check_count("seq_len", seq_len)
    d = int(cfg.hidden_size)
    m = int(cfg.intermediate_size)
    heads = int(cfg.num_attention_heads)
    kv_heads = _text_kv_heads(cfg)
    h = _text_head_dim(cfg)
    pairs = n * (n + 1) // 2 if causal else n * n

    q_o = 2 * (2 * n * d * heads * h)
    k_v = 2 * (2 * n * d * kv_heads * h)
    attention = 2 * (2 * heads * pairs * h)
    mlp = 3 * (2 * n * d * m)
    return q_o + k_v + attention + mlp


def llm_prefill_flops(
    text_config: Any,
    seq_len: int | Sequence[int],
    batch_size: int = 1,
    *,
    lm_head_tokens: int | None = 1,
    causal: bool = False,
) -> int:
    """FLOPs of a Llama prefill over ``seq_len`` tokens for ``batch_size`` sequences.

    Per layer, with ``n`` tokens, width ``d``, ``H`` query heads, ``K`` KV
    heads, head width ``h`` and MLP width ``m``:

    * q and o projections: ``2 * (2*n*d*H*h)``;
    * k and v projections (grouped-query): ``2 * (2*n*d*K*h)``;
    * QK^T and AV: ``2 * (2*H*P*h)`` where ``P = n*n`` query/key pairs, or
      ``n*(n+1)/2`` with ``causal=True`` (see the module docstring);
    * gated MLP (gate, up, down): ``3 * (2*n*d*m)``.

    Plus the LM head ``2*d*vocab`` for each of ``lm_head_tokens`` positions
    per sequence (``None`` = every position of the last layer).

    ``seq_len`` may also be one length per decoder layer, for a model that
    drops tokens between layers (FlowCut's LLM stage on LLaVA-NeXT).
    """
    cfg = _text_cfg(text_config)
    batch_size = check_count("batch_size", batch_size)
    lengths = _layer_lengths(cfg, seq_len)
    n = lengths[-1]
    if lm_head_tokens is None:
        head_positions = n
    else:
        head_positions = min(check_count("lm_head_tokens", lm_head_tokens), n)
    lm_head = 2 * head_positions * int(cfg.hidden_size) * int(cfg.vocab_size)
    return batch_size * (sum(decoder_layer_flops(cfg, length, causal=causal) for length in lengths) + lm_head)


def _layer_lengths(cfg: Any, seq_len: int | Sequence[int]) -> list[int]:
    layers = int(cfg.num_hidden_layers)
    if isinstance(seq_len, int) and not isinstance(seq_len, bool):
        return [check_count("seq_len", seq_len)] * layers
    lengths = [check_count("seq_len", n) for n in seq_len]
    if len(lengths) != layers:
        raise ValueError(f"got {len(lengths)} per-layer sequence lengths for a {layers}-layer language model")
    return lengths


def kv_cache_bytes(text_config: Any, seq_len: int | Sequence[int], batch_size: int = 1, dtype: Any = "float16") -> int:
    """Bytes of the KV cache after a prefill of ``seq_len`` tokens.

    ``2 (K and V) x layers x kv_heads x head_dim x seq_len x batch x bytes``.
    ``seq_len`` may be one length per decoder layer (layers that cache
    different lengths, as after FlowCut's LLM stage). This matches the
    ``nbytes`` of the tensors a ``DynamicCache`` holds; it excludes allocator
    slack and any pre-allocated static-cache headroom.
    """
    cfg = _text_cfg(text_config)
    batch_size = check_count("batch_size", batch_size)
    per_token = 2 * _text_kv_heads(cfg) * _text_head_dim(cfg) * batch_size * dtype_nbytes(dtype)
    return per_token * sum(_layer_lengths(cfg, seq_len))


# --------------------------------------------------------------------------- #
# whole-prefill bundle
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class PrefillAccount:
    """Compute and KV-cache memory of one LLaVA prefill (vision + projector + LLM).

    The first four fields are the measurements; the rest record the inputs
    they were computed from so a JSON report is self-describing.
    """

    vision_flops: int
    projector_flops: int
    llm_flops: int
    kv_cache_bytes: int
    batch_size: int = 1
    num_images: int = 1
    token_schedule: tuple[int, ...] = field(default_factory=tuple)
    num_image_tokens: int = 0
    llm_seq_len: int = 0
    kv_dtype: str = "float16"
    llm_layer_seq_lens: tuple[int, ...] = field(default_factory=tuple)
    """Per decoder layer, the sequence length it processed (and caches); empty when every layer has ``llm_seq_len``."""

    @property
    def total_flops(self) -> int:
        return self.vision_flops + self.projector_flops + self.llm_flops

    def as_dict(self) -> dict[str, Any]:
        """JSON-ready dict (plain ints / strs / lists), ``total_flops`` included."""
        out = asdict(self)
        out["token_schedule"] = list(self.token_schedule)
        out["llm_layer_seq_lens"] = list(self.llm_layer_seq_lens)
        out["total_flops"] = self.total_flops
        return out

    def ratio_to(self, baseline: "PrefillAccount") -> dict[str, float]:
        """This account divided by ``baseline`` per quantity (e.g. pruned / unpruned)."""

        def _ratio(a: int, b: int) -> float:
            return a / b if b else float("nan")

        return {
            "vision_flops": _ratio(self.vision_flops, baseline.vision_flops),
            "projector_flops": _ratio(self.projector_flops, baseline.projector_flops),
            "llm_flops": _ratio(self.llm_flops, baseline.llm_flops),
            "kv_cache_bytes": _ratio(self.kv_cache_bytes, baseline.kv_cache_bytes),
            "total_flops": _ratio(self.total_flops, baseline.total_flops),
        }


def _dtype_name(dtype: Any) -> str:
    if isinstance(dtype, str):
        return dtype.removeprefix("torch.")
    if isinstance(dtype, int) and not isinstance(dtype, bool):
        return f"{dtype}-byte"
    return str(dtype).removeprefix("torch.")


def prefill_account(
    config: Any,
    num_text_tokens: int,
    token_schedule: Sequence[int] | None = None,
    num_image_tokens: int | None = None,
    batch_size: int = 1,
    *,
    images_per_prompt: int = 1,
    kv_dtype: Any = "float16",
    lm_head_tokens: int | None = 1,
    causal: bool = False,
) -> PrefillAccount:
    """Account for one batched LLaVA prefill.

    Args:
        config: the ``LlavaConfig``.
        num_text_tokens: non-image tokens in each prompt (system prompt,
            question, chat template). The LLM sequence is this plus
            ``images_per_prompt * num_image_tokens``.
        token_schedule: per-layer encoder sequence lengths the model
            reported; ``None`` = unpruned (``full_schedule(config)``).
        num_image_tokens: image tokens per image reaching the LLM (FlowCut's
            ``target_num``). Required when ``token_schedule`` is given, since
            the schedule alone does not say how many tokens the final prune
            kept; ``None`` with no schedule = unpruned (576 for LLaVA-1.5).
        batch_size: prompts in the batch.
        images_per_prompt: LLaVA-1.5 uses one.
        kv_dtype: KV-cache element type (torch dtype, name or byte count).
        lm_head_tokens, causal: see :func:`llm_prefill_flops`.
    """
    num_text_tokens = check_count("num_text_tokens", num_text_tokens)
    batch_size = check_count("batch_size", batch_size)
    images_per_prompt = check_count("images_per_prompt", images_per_prompt)
    if token_schedule is None:
        schedule = full_schedule(config)
        if num_image_tokens is None:
            num_image_tokens = full_num_image_tokens(config)
    else:
        schedule = _check_schedule(_vision_cfg(config), token_schedule)
        if num_image_tokens is None:
            raise ValueError("num_image_tokens is required when token_schedule is given")
    num_image_tokens = check_count("num_image_tokens", num_image_tokens)

    num_images = batch_size * images_per_prompt
    llm_seq_len = num_text_tokens + images_per_prompt * num_image_tokens
    return PrefillAccount(
        vision_flops=vision_encoder_flops(config, schedule, num_images),
        projector_flops=projector_flops(config, num_image_tokens, num_images),
        llm_flops=llm_prefill_flops(
            config, llm_seq_len, batch_size, lm_head_tokens=lm_head_tokens, causal=causal
        ),
        kv_cache_bytes=kv_cache_bytes(config, llm_seq_len, batch_size, kv_dtype),
        batch_size=batch_size,
        num_images=num_images,
        token_schedule=tuple(schedule),
        num_image_tokens=num_image_tokens,
        llm_seq_len=llm_seq_len,
        kv_dtype=_dtype_name(kv_dtype),
    )


# --------------------------------------------------------------------------- #
# LLaVA-NeXT (anyres crops, and FlowCut's LLM stage)
# --------------------------------------------------------------------------- #


@dataclass(frozen=True)
class AnyresImageTokens:
    """How the tokens of one LLaVA-NeXT image flow through a prefill.

    Attributes:
        crops: anyres crops of the image (the base image and the grid crops).
        vision_schedule: the sequence length (CLS included) each vision-encoder layer that ran processed, the same
            for every crop of the image; its last entry minus CLS is what each crop hands the projector.
        tokens_into_llm: the image's visual tokens entering the language model.
        tokens_after_llm_stage: those the layers after FlowCut's LLM stage see (``tokens_into_llm`` without one).
    """

    crops: int
    vision_schedule: tuple[int, ...]
    tokens_into_llm: int
    tokens_after_llm_stage: int

    @classmethod
    def stock(cls, config: Any, image_size_hw: Sequence[int]) -> "AnyresImageTokens":
        """The stock model: every crop through all encoder layers unpruned, the stock token count into the LLM (the
        crops and the count of the config's family, see :meth:`flowcut_hf.family.FlowCutFamily.image_crops`)."""
        from .registry import family_for_config

        family = family_for_config(config)
        vision = _vision_cfg(config)
        count = family.stock_image_tokens(config, image_size_hw)
        schedule = (num_patches(vision) + 1,) * int(vision.num_hidden_layers)
        return cls(family.image_crops(config, image_size_hw), schedule, count, count)


def next_prefill_account(
    config: Any,
    num_text_tokens: int,
    images: Sequence[AnyresImageTokens],
    llm_prune_layer: int | None = None,
    *,
    kv_dtype: Any = "float16",
    lm_head_tokens: int | None = 1,
    causal: bool = False,
) -> PrefillAccount:
    """Account for one LLaVA-NeXT prefill of a prompt with ``images``.

    Vision: every crop of every image with its image's schedule. Projector: each crop's output tokens. LLM: layers up
    to ``llm_prune_layer`` over ``num_text_tokens`` plus every image's ``tokens_into_llm``, later layers over the text
    plus every image's ``tokens_after_llm_stage`` (``None``: no LLM stage, every layer over the first). The KV cache
    holds each layer's own length.
    """
    num_text_tokens = check_count("num_text_tokens", num_text_tokens)
    text = _text_cfg(config)
    vision = _vision_cfg(config)
    vision_flops = projector = 0
    for image in images:
        schedule = _check_schedule(vision, image.vision_schedule)
        vision_flops += vision_encoder_flops(config, schedule, image.crops)
        projector += projector_flops(config, schedule[-1] - 1, image.crops)
    full = num_text_tokens + sum(image.tokens_into_llm for image in images)
    kept = num_text_tokens + sum(image.tokens_after_llm_stage for image in images)
    layers = int(text.num_hidden_layers)
    if llm_prune_layer is None:
        lengths = [full] * layers
    else:
        if not 0 <= llm_prune_layer < layers - 1:
            raise ValueError(f"llm_prune_layer {llm_prune_layer} must leave a layer after it (0..{layers - 2})")
        lengths = [full] * (llm_prune_layer + 1) + [kept] * (layers - llm_prune_layer - 1)
    return PrefillAccount(
        vision_flops=vision_flops,
        projector_flops=projector,
        llm_flops=llm_prefill_flops(config, lengths, lm_head_tokens=lm_head_tokens, causal=causal),
        kv_cache_bytes=kv_cache_bytes(config, lengths, dtype=kv_dtype),
        batch_size=1,
        num_images=len(images),
        token_schedule=tuple(images[0].vision_schedule) if images else (),
        num_image_tokens=sum(image.tokens_after_llm_stage for image in images),
        llm_seq_len=lengths[-1],
        kv_dtype=_dtype_name(kv_dtype),
        llm_layer_seq_lens=tuple(lengths),
    )


@dataclass(frozen=True)
class PrefillFlops:
    """A prefill's analytic FLOPs, for accounts that count only the total."""

    total_flops: int
