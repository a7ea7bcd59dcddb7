"""Pruning inside the language model: the decoder runs as layer groups, each with its own token layout.

FlowCut on LLaVA-NeXT (and later Qwen2-VL, and VFlowOpt's staged drops) shortens the sequence twice:

1. before the LLM, where each image's stock placeholder span is replaced by its (fewer) visual features
   (:func:`splice_image_features`);
2. between two decoder layers, where a :class:`TokenDropper` decides which tokens the later layers still see
   (:class:`FlowCutLLMPruner` is FlowCut's: the last prompt token scores each image's visual tokens).

Layers before a drop keep the longer sequence in their KV cache, later layers the shorter one, so per-layer KV
lengths differ while transformers builds one causal mask from layer 0. :func:`run_layer_groups` therefore runs the
decoder layers itself, group by group, with one padding mask, one set of positions and one causal mask per group.
Every group's batch is left-aligned (each row's tokens are its last columns), as generation appends on the right.
Positions are compacted within each group (a token's position is the number of real tokens before it in its
group), as the authors' code does on LLaVA-NeXT, unless the tokens carry their own rotary positions
(:data:`ROPE_POSITION`: Qwen2-VL's (t, h, w) M-RoPE positions, or VFlowOpt's original 1-D positions): those stay
with each token whatever is dropped.

What a later call (a decoding step) needs is :class:`LayerGroupsState`: each group's padding mask over what its
layers have cached, and the prompt length of the prefill. Models return it in their output and take it back as
``flowcut_state``; ``generate()`` carries it between steps.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, contextmanager, nullcontext
from dataclasses import dataclass
from itertools import accumulate
from typing import Protocol

import torch
from torch import nn
from transformers.cache_utils import get_layer_types_and_kwargs
from transformers.masking_utils import create_causal_mask, create_sliding_window_causal_mask
from transformers.modeling_outputs import BaseModelOutputWithPast
from transformers.utils.output_capturing import capture_outputs

from .flowcut_compat import build_output, cache_kwargs, slice_logits_to_keep
from .flowcut_core import compute_layer_signals, fused_score, record_module_outputs, top_k_in_order

MASK_FACTORIES: dict[str, Callable] = {
    "full_attention": create_causal_mask,
    "sliding_attention": create_sliding_window_causal_mask,
}

# Keys of the per-token metadata that travels with the hidden states through every compaction.
INPUT_POSITION = "input_position"  # column of the forward's input the token came from, -1 for padding
IMAGE_INDEX = "image_index"  # index of the image a prunable visual token belongs to, -1 otherwise
IS_ANCHOR = "is_anchor"  # the text token whose query and value score the visual tokens (last prompt token)
# optional: rotary positions that stay with each token, [batch, length] (1-D RoPE) or [batch, length, axes] (M-RoPE)
ROPE_POSITION = "rope_position"
ROPE_AXES = 3  # M-RoPE's (temporal, height, width); a text token has the same position on every axis
IMPORTANCE = "importance"  # optional: a per-token score a TokenDropper ranks visual tokens by (VFlowOpt)


@dataclass
class LayerGroupsState:
    """What a decoder run in layer groups must remember between forward calls.

    Attributes:
        group_starts: the first decoder layer of each group; group ``g`` runs layers
            ``group_starts[g] .. group_starts[g + 1] - 1``.
        padding_masks: per group, ``[batch, tokens cached by the group's layers]``, True for real tokens.
        prompt_length: input columns of the prefill call. A later call without a cache re-reads the whole
            sequence; it scores with the same (last prompt) token as the prefill did, so cached and uncached decoding
            agree.
        next_rope_positions: ``[batch]``, for tokens that carry their rotary positions: the position the next
            appended token gets when the caller passes none (one past the last real token's).
        rope_axes: the axes of carried positions (3 for M-RoPE, 0 for 1-D positions).
    """

    group_starts: tuple[int, ...]
    padding_masks: tuple[torch.Tensor, ...]
    prompt_length: int
    next_rope_positions: torch.Tensor | None = None
    rope_axes: int = ROPE_AXES


@dataclass
class TokenLayout:
    """A left-aligned batch of token sequences and the metadata that follows each token."""

    hidden_states: torch.Tensor
    """``[batch, length, hidden]``."""
    mask: torch.Tensor
    """``[batch, length]`` bool, True for real tokens; row ``b``'s tokens are its last ``mask[b].sum()`` columns."""
    info: dict[str, torch.Tensor]
    """Per-token metadata, each ``[batch, length, ...]``."""

    def select(self, keep: torch.Tensor) -> "TokenLayout":
        """Keeps the tokens where ``keep`` is True, left-aligned again."""
        index, mask = left_aligned_index(keep & self.mask)
        hidden_index = index.to(self.hidden_states.device).unsqueeze(-1).expand(-1, -1, self.hidden_states.shape[-1])
        info = {}
        for name, values in self.info.items():
            trailing = values.shape[2:]
            value_index = index.to(values.device).view(*index.shape, *(1,) * len(trailing)).expand(-1, -1, *trailing)
            value_mask = mask.to(values.device).view(*mask.shape, *(1,) * len(trailing))
            info[name] = values.gather(1, value_index).masked_fill(~value_mask, PAD_VALUES[name])
        return TokenLayout(self.hidden_states.gather(1, hidden_index), mask, info)


PAD_VALUES = {INPUT_POSITION: -1, IMAGE_INDEX: -1, IS_ANCHOR: False, ROPE_POSITION: 0, IMPORTANCE: 0.0}


def left_aligned_index(keep: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Gather indices that move each row's kept columns to the right end, in order, with padding on the left.

    Returns ``(index, mask)``, both ``[batch, width]`` where ``width`` is the longest row; padding columns point at
    column 0 and are False in ``mask``.
    """
    width = int(keep.sum(dim=-1).max()) if keep.numel() else 0
    # A stable sort on the keep flag puts the dropped columns first and the kept ones last, each in their order.
    order = torch.sort(keep.to(torch.int8), dim=-1, stable=True).indices
    index = order[:, order.shape[1] - width :]
    mask = keep.gather(1, index)
    return index.masked_fill(~mask, 0), mask


def splice_image_features(
    inputs_embeds: torch.Tensor,
    placeholder_mask: torch.Tensor,
    attention_mask: torch.Tensor | None,
    image_features: Sequence[torch.Tensor],
    placeholder_counts: Sequence[int],
    prunable: Sequence[bool],
    prompt_length: int | None = None,
    kept_offsets: Sequence[torch.Tensor] | None = None,
) -> TokenLayout:
    """Replaces each image's placeholder span by its visual features, dropping the placeholders left over.

    The ``i``-th image owns the ``i``-th run of ``placeholder_counts[i]`` placeholders, counted in row-major order
    over the batch, as stock LLaVA assigns features; its first ``len(image_features[i])`` placeholders become its
    features (or, with ``kept_offsets``, the placeholders at those offsets within its span) and the rest of its span
    is dropped. Padding (``attention_mask`` 0) is dropped too, and every row is left-aligned again.

    Args:
        inputs_embeds: ``[batch, length, hidden]``, the embedded input with placeholders.
        placeholder_mask: ``[batch, length]`` bool.
        attention_mask: ``[batch, length]`` or None (no padding).
        image_features: per image, ``[tokens, hidden]``, at most its placeholder count.
        placeholder_counts: per image, how many placeholders the processor emitted for it.
        prunable: per image, whether its visual tokens may be dropped later (by a :class:`TokenDropper`).
        prompt_length: only columns before it may be the anchor (the last prompt token); all columns by default.
        kept_offsets: per image, the ascending offsets within its span that its features fill (Qwen2-VL keeps each
            kept token at the placeholder of its own merge unit, so it keeps that placeholder's column and position).
    """
    batch, length = placeholder_mask.shape
    device = placeholder_mask.device
    counts = torch.tensor(list(placeholder_counts), device=device, dtype=torch.long)
    kept_counts = torch.tensor([len(f) for f in image_features], device=device, dtype=torch.long)
    if bool((kept_counts > counts).any()):
        raise ValueError("an image has more visual features than placeholders; this is a bug in the model adapter")
    span_ends = counts.cumsum(0)
    span_starts = span_ends - counts

    flat_positions = placeholder_mask.flatten().nonzero().squeeze(-1)
    if flat_positions.numel() != int(counts.sum()):
        raise ValueError(
            f"the input holds {flat_positions.numel()} image placeholders, but the images need "
            f"{int(counts.sum())} ({list(placeholder_counts)} per image)"
        )
    if len(counts):
        rows = flat_positions // length
        if bool((rows[span_starts] != rows[span_ends - 1]).any()):
            raise ValueError("an image's placeholders continue into the next prompt of the batch")

    rank = placeholder_mask.flatten().long().cumsum(0).view(batch, length) - 1
    owner = torch.searchsorted(span_ends, rank.clamp(min=0), right=True).clamp(max=max(len(counts) - 1, 0))
    if len(counts) and kept_offsets is not None:
        offset_flags = torch.zeros(int(counts.sum()), dtype=torch.bool, device=device)
        for start, offsets, count in zip(span_starts.tolist(), kept_offsets, kept_counts.tolist()):
            if len(offsets) != count:
                raise ValueError("an image's kept offsets and features differ in number; this is a bug in the adapter")
            offset_flags[start + offsets.to(device)] = True
        kept_placeholder = placeholder_mask & offset_flags[rank.clamp(min=0)]
    elif len(counts):
        offset = rank - span_starts[owner]
        kept_placeholder = placeholder_mask & (offset < kept_counts[owner])
    else:
        kept_placeholder = torch.zeros_like(placeholder_mask)
    real = attention_mask.bool().to(device) if attention_mask is not None else torch.ones_like(placeholder_mask)
    keep = real & (~placeholder_mask | kept_placeholder)

    if len(image_features):
        features = torch.cat(list(image_features)).to(inputs_embeds.device, inputs_embeds.dtype)
        inputs_embeds = inputs_embeds.masked_scatter(kept_placeholder.unsqueeze(-1).to(inputs_embeds.device), features)

    columns = torch.arange(length, device=device).expand(batch, -1)
    prunable_image = torch.tensor(list(prunable) or [False], device=device)
    image_index = torch.where(kept_placeholder & prunable_image[owner], owner, torch.full_like(owner, -1))
    limit = length if prompt_length is None else prompt_length
    anchor_candidates = torch.where(keep & (columns < limit), columns, torch.full_like(columns, -1))
    anchor_column = anchor_candidates.max(dim=-1, keepdim=True).values
    is_anchor = (columns == anchor_column) & (anchor_column >= 0)

    layout = TokenLayout(
        inputs_embeds, torch.ones_like(keep), {INPUT_POSITION: columns, IMAGE_INDEX: image_index, IS_ANCHOR: is_anchor}
    )
    return layout.select(keep)


def continuation_layout(
    inputs_embeds: torch.Tensor, attention_mask: torch.Tensor | None, rope_positions: torch.Tensor | None = None
) -> TokenLayout:
    """The layout of new tokens appended to a cache (a decoding step, or text continuing a conversation).

    ``rope_positions`` (``[batch, length, axes]``) are carried rotary positions for families that use them; None for
    compacted positions, or to let :func:`run_layer_groups` continue from the state's ``next_rope_positions``.
    """
    batch, length = inputs_embeds.shape[:2]
    device = inputs_embeds.device
    mask = (
        attention_mask[:, -length:].bool().to(device)
        if attention_mask is not None
        else torch.ones(batch, length, dtype=torch.bool, device=device)
    )
    columns = torch.arange(length, device=device).expand(batch, -1)
    info = {
        INPUT_POSITION: columns.masked_fill(~mask, -1),
        IMAGE_INDEX: torch.full_like(columns, -1),
        IS_ANCHOR: torch.zeros_like(mask),
    }
    if rope_positions is not None:
        info[ROPE_POSITION] = rope_positions.to(device)
    return TokenLayout(inputs_embeds, mask, info)


def placeholder_positions(embeddings: nn.Module, token_id: int, input_ids, inputs_embeds) -> torch.Tensor:
    """``[batch, length]`` bool: where the ``token_id`` placeholders are, from the ids or, without them, from the
    embedded input (rows equal to the placeholder's embedding)."""
    if input_ids is not None:
        return input_ids == token_id
    embedding = embeddings(torch.tensor(token_id, device=inputs_embeds.device))
    return (inputs_embeds == embedding).all(-1)


def check_placeholder_counts(placeholders: torch.Tensor, counts: Sequence[int], fix: str) -> None:
    """Raises if the input does not hold exactly the placeholders its images need; ``fix`` says how to build it."""
    found, expected = int(placeholders.sum()), list(counts)
    if found != sum(expected):
        raise ValueError(
            f"The input holds {found} image placeholder tokens, but its {len(expected)} image(s) need {sum(expected)} "
            f"({expected} per image). {fix}"
        )


class TokenDropper(Protocol):
    """Decides, between two layer groups, which tokens the later layers still see."""

    def observe(self, layer_idx: int, layer: nn.Module) -> AbstractContextManager:
        """Wraps the call of decoder layer ``layer_idx``, e.g. to read its projections."""

    def select(self, next_layer: int, layout: TokenLayout, position_embeddings: tuple[torch.Tensor, torch.Tensor]):
        """Returns ``[batch, length]`` bool: the tokens of ``layout`` that layer ``next_layer`` and later see."""


@dataclass
class LayerGroupsOutput(BaseModelOutputWithPast):
    r"""
    Output of [`run_layer_groups`].

    token_mask (`torch.BoolTensor` of shape `(batch_size, sequence_length)`):
        Real tokens of `last_hidden_state` (False for padding).
    token_info (`dict[str, torch.Tensor]`):
        Per-token metadata of `last_hidden_state`, each `(batch_size, sequence_length)`.
    state ([`LayerGroupsState`]):
        What the next forward call needs (see [`LayerGroupsState`]).
    """

    token_mask: torch.Tensor | None = None
    token_info: dict[str, torch.Tensor] | None = None
    state: LayerGroupsState | None = None


def layer_attention_kinds(text_config) -> list[str]:
    """Each decoder layer's attention kind ("full_attention", "sliding_attention"), as the cache sees them."""
    kinds = get_layer_types_and_kwargs(text_config)[0]
    unsupported = sorted(set(kinds) - set(MASK_FACTORIES))
    if unsupported:
        raise ValueError(
            f"FlowCut's LLM stage supports full and sliding-window attention layers; this language model also has "
            f"{unsupported}. Set flowcut_enabled=False to run it unpruned."
        )
    return kinds


def check_supported_cache(cache) -> None:
    if cache is not None and getattr(cache, "is_compileable", False):
        raise ValueError(
            f"{type(cache).__name__} holds one length for every layer, but with pruning inside the LLM the "
            "layers cache different lengths. Use the default DynamicCache (do not pass cache_implementation='static')."
        )


@capture_outputs
def run_layer_groups(
    language_model: nn.Module,
    layout: TokenLayout,
    group_starts: Sequence[int],
    past_state: LayerGroupsState | None,
    cache=None,
    use_cache: bool | None = None,
    dropper: TokenDropper | None = None,
    prompt_length: int = 0,
    **layer_kwargs,
) -> LayerGroupsOutput:
    """Runs ``language_model``'s decoder layers group by group on ``layout``.

    Before the first layer of each group after the first, ``dropper`` (if any) chooses the tokens that stay; each
    group then gets its own padding mask (its cached tokens plus the kept ones), compacted positions and causal masks
    (one per attention kind, sized against the group's own cache). Decoding steps pass the previous call's
    ``past_state`` and no dropper: their new tokens are appended to every group.

    ``language_model`` is a stock decoder (``embed_tokens``, ``layers``, ``rotary_emb``, ``norm``: Llama, Mistral,
    Qwen2, ...). ``layer_kwargs`` go to every decoder layer, as the stock model passes its ``**kwargs``;
    ``output_hidden_states`` / ``output_attentions`` among them are recorded as the stock model records them (hidden
    states of layers after a drop are shorter).
    """
    config = language_model.config
    layers = language_model.layers[: config.num_hidden_layers]
    kinds = layer_attention_kinds(config)
    if list(group_starts[:1]) != [0] or list(group_starts) != sorted(set(group_starts)) or group_starts[-1] >= len(layers):
        raise ValueError(f"layer groups must start at 0 and increase within the {len(layers)} layers, got {group_starts}")
    check_supported_cache(cache)
    if past_state is not None and tuple(past_state.group_starts) != tuple(group_starts):
        raise ValueError(
            f"the cached state was built with layer groups starting at {past_state.group_starts}, this call uses "
            f"{tuple(group_starts)}; do not change flowcut settings in the middle of a generation"
        )
    bounds = list(group_starts) + [len(layers)]
    padding_masks = []
    position_embeddings = None
    carries_positions = past_state is not None and past_state.next_rope_positions is not None
    if carries_positions and ROPE_POSITION not in layout.info:
        layout = continue_rope_positions(layout, past_state.next_rope_positions, past_state.rope_axes)
    carries_positions = ROPE_POSITION in layout.info
    for group, (start, end) in enumerate(zip(bounds[:-1], bounds[1:])):
        if group > 0 and dropper is not None:
            layout = layout.select(dropper.select(start, layout, position_embeddings))
        hidden_states = layout.hidden_states
        mask = layout.mask.to(hidden_states.device)
        past_mask = (
            past_state.padding_masks[group].to(mask.device)
            if past_state is not None
            else mask.new_zeros(mask.shape[0], 0)
        )
        full_mask = torch.cat([past_mask, mask], dim=1)
        carried = layout.info.get(ROPE_POSITION) if carries_positions else None
        if carried is not None and carried.dim() == 3:
            # M-RoPE: [axes, batch, length]; the layers and masks then get no 1-D positions, as from the stock model.
            rope_positions = carried.to(hidden_states.device).permute(2, 0, 1)
            position_embeddings = language_model.rotary_emb(hidden_states, position_ids=rope_positions)
            positions = None
        elif carried is not None:
            positions = carried.to(hidden_states.device)
            position_embeddings = language_model.rotary_emb(hidden_states, position_ids=positions)
        else:
            positions = past_mask.sum(dim=-1, keepdim=True) + mask.long().cumsum(dim=-1) - 1
            positions = positions.masked_fill(~mask, 0)
            position_embeddings = language_model.rotary_emb(hidden_states, position_ids=positions)
        causal_masks: dict[str, object] = {}
        for layer_idx in range(start, end):
            kind = kinds[layer_idx]
            if kind not in causal_masks:
                causal_masks[kind] = MASK_FACTORIES[kind](
                    config=config,
                    inputs_embeds=hidden_states,
                    attention_mask=full_mask,
                    position_ids=positions,
                    layer_idx=layer_idx,
                    **cache_kwargs(cache),
                )
            observer = dropper.observe(layer_idx, layers[layer_idx]) if dropper is not None else nullcontext()
            with observer:
                hidden_states = layers[layer_idx](
                    hidden_states,
                    attention_mask=causal_masks[kind],
                    position_embeddings=position_embeddings,
                    position_ids=positions,
                    use_cache=use_cache,
                    **cache_kwargs(cache),
                    **layer_kwargs,
                )
        layout = TokenLayout(hidden_states, layout.mask, layout.info)
        padding_masks.append(full_mask)
    state = LayerGroupsState(
        tuple(group_starts),
        tuple(padding_masks),
        past_state.prompt_length if past_state is not None else prompt_length,
        next_rope_positions(layout, past_state) if carries_positions else None,
        (layout.info[ROPE_POSITION].shape[2] if layout.info[ROPE_POSITION].dim() == 3 else 0) if carries_positions else ROPE_AXES,
    )
    return build_output(
        LayerGroupsOutput,
        last_hidden_state=language_model.norm(layout.hidden_states),
        cache=cache if use_cache else None,
        token_mask=layout.mask,
        token_info=layout.info,
        state=state,
    )


def continue_layer_groups(
    language_model: nn.Module, inputs_embeds: torch.Tensor, attention_mask, state: LayerGroupsState, cache, use_cache: bool,
    **layer_kwargs,
) -> LayerGroupsOutput:
    """New tokens after a pruned prefill (a decoding step): appended to every layer group of ``state``."""
    return run_layer_groups(
        language_model, continuation_layout(inputs_embeds, attention_mask), state.group_starts, past_state=state,
        cache=cache, use_cache=use_cache, **layer_kwargs,
    )


def continue_rope_positions(layout: TokenLayout, next_positions: torch.Tensor, axes: int = ROPE_AXES) -> TokenLayout:
    """Gives appended tokens consecutive rotary positions (equal on every axis; ``axes`` 0 for 1-D positions) from
    ``next_positions`` ``[batch]``."""
    mask = layout.mask
    positions = next_positions.to(mask.device).unsqueeze(-1) + mask.long().cumsum(dim=-1) - 1
    positions = positions.masked_fill(~mask, 0)
    if axes:
        positions = positions.unsqueeze(-1).expand(-1, -1, axes)
    return TokenLayout(layout.hidden_states, mask, {**layout.info, ROPE_POSITION: positions})


def next_rope_positions(layout: TokenLayout, past_state: LayerGroupsState | None) -> torch.Tensor:
    """One past the largest rotary position of each row's real tokens (and of what the cache already holds)."""
    positions = layout.info[ROPE_POSITION]
    mask = layout.mask.to(positions.device)
    if positions.dim() == 3:
        mask = mask.unsqueeze(-1)
    following = positions.masked_fill(~mask, -1).flatten(1).amax(dim=1) + 1
    if past_state is not None and past_state.next_rope_positions is not None:
        following = torch.maximum(following, past_state.next_rope_positions.to(following.device))
    return following


def follow_input_positions(values: torch.Tensor, input_positions: torch.Tensor, fill) -> torch.Tensor:
    """Gathers per-column ``values`` ``[batch, input_length]`` into the pruned layout; padding gets ``fill``."""
    positions = input_positions.to(values.device)
    return values.gather(1, positions.clamp(min=0)).masked_fill(positions < 0, fill)


def resolved_use_cache(model: nn.Module, text_config, use_cache: bool | None) -> bool:
    """``use_cache`` as the stock language model would resolve it (its config, off under gradient checkpointing)."""
    if use_cache is None:
        use_cache = bool(getattr(text_config, "use_cache", True))
    language_model = getattr(model, "language_model", model)
    return use_cache and not (model.training and getattr(language_model, "gradient_checkpointing", False))


def check_stock_continuation(cache, new_tokens: int, attention_mask: torch.Tensor | None) -> None:
    """A cache whose layers differ in length came from a pruned prefill; continuing it needs its flowcut_state."""
    past_length = cache.get_seq_length() if cache is not None else 0
    if past_length == 0:
        return
    lengths = {cache.get_seq_length(layer) for layer in range(len(cache.layers))}
    mismatched_mask = attention_mask is not None and attention_mask.shape[1] != past_length + new_tokens
    if len(lengths) > 1 or mismatched_mask:
        raise ValueError(
            "cache comes from a forward call that pruned visual tokens, so its layers hold a shortened "
            "sequence: pass that call's output.flowcut_state as flowcut_state= together with its "
            "cache (generate() does this itself)."
        )


STOCK, CONTINUE, WHOLE, PRUNE = "stock", "continue", "whole", "prune"


def forward_route(
    enabled: bool,
    flowcut_state: LayerGroupsState | None,
    encoder_outputs: dict,
    cache,
    new_tokens: int,
    attention_mask: torch.Tensor | None,
) -> str:
    """Which path a two-stage model's forward takes, after the checks every such family shares.

    ``encoder_outputs`` maps a modality to the model's own features for this call (``placeholder_counts`` and
    ``prunable`` per item). Returns :data:`STOCK` (pruning off), :data:`CONTINUE` (new tokens after a pruned prefill,
    with its ``flowcut_state``), :data:`WHOLE` (nothing to prune: the stock forward on these features) or
    :data:`PRUNE` (a prefill that prunes).
    """
    if not enabled:
        if flowcut_state is not None:
            raise ValueError("flowcut_enabled was switched off in the middle of a generation; start a new one")
        return STOCK
    for name, output in encoder_outputs.items():
        if getattr(output, "placeholder_counts", None) is None:
            raise ValueError(
                f"These {name} features do not say how many placeholders each {name} fills (they were sliced, e.g. by "
                "chunked prefill, or come from a stock model). FlowCut needs the whole prompt in one forward call: do "
                "not use prefill_chunk_size, and pass pixel values or this model's own features."
            )
    past_length = cache.get_seq_length() if cache is not None else 0
    if past_length > 0 and flowcut_state is not None:
        if encoder_outputs:
            raise ValueError(
                "FlowCut reads images only in the first forward call of a sequence; put all of them in the prompt of "
                "the prefill (a cache that continues with new images is not supported)."
            )
        return CONTINUE
    if not any(any(output.prunable) for output in encoder_outputs.values()):
        check_stock_continuation(cache, new_tokens, attention_mask)
        return WHOLE
    return PRUNE


class LayerGroupsGenerationMixin:
    """``generate()`` support for models that run their decoder with :func:`run_layer_groups`.

    Decoding steps continue the pruned per-group layout (``flowcut_state``), and the prompt is read in one forward
    call, since the LLM stage scores with its last token. ``self.model.pruning_enabled()`` says whether pruning is on.
    """

    def logits_and_loss(self, outputs, labels, logits_to_keep, **kwargs) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The LM head's logits of the inner model's ``outputs`` and, with ``labels`` (aligned with the input, as for
        the stock model), the loss of the pruned sequence: labels follow ``outputs.input_positions``."""
        logits = self.lm_head(slice_logits_to_keep(outputs.last_hidden_state, logits_to_keep))
        if labels is None:
            return logits, None
        input_positions = getattr(outputs, "input_positions", None)
        if input_positions is not None:
            labels = follow_input_positions(labels, input_positions, -100)
        return logits, self.loss_function(logits=logits, labels=labels, vocab_size=self.config.text_config.vocab_size, **kwargs)

    per_image_fields: tuple[str, ...] = ()
    """The per-image fields of the family's image features, which beam search and ``num_return_sequences`` repeat."""

    def _expand_multimodal_outputs(self, input_ids, mm_encoder_output, expand_size=1, inputs_embeds=None):
        image_output = mm_encoder_output.get("image")
        if getattr(image_output, "placeholder_counts", None) is None:
            return super()._expand_multimodal_outputs(
                input_ids, mm_encoder_output, expand_size=expand_size, inputs_embeds=inputs_embeds
            )
        # The stock helper matches placeholder counts with feature lengths, which differ once tokens are pruned;
        # the placeholder counts say which images belong to which prompt.
        ids = input_ids if input_ids is not None and input_ids.numel() else None
        placeholders = self.model.placeholder_mask(ids, inputs_embeds)
        per_prompt = list(accumulate(int(n) for n in placeholders.sum(-1)))
        per_image = list(accumulate(image_output.placeholder_counts))
        offsets = [0] + [i + 1 for i, total in enumerate(per_image) if total in per_prompt]
        for name in self.per_image_fields:
            values = getattr(image_output, name)
            if values is None:  # a field the running method does not fill
                continue
            setattr(
                image_output,
                name,
                [value for start, end in zip(offsets[:-1], offsets[1:]) for value in list(values[start:end]) * expand_size],
            )
        return mm_encoder_output

    def _update_model_kwargs_for_generation(self, outputs, model_kwargs, is_encoder_decoder=False, num_new_tokens=1):
        model_kwargs = super()._update_model_kwargs_for_generation(
            outputs, model_kwargs, is_encoder_decoder=is_encoder_decoder, num_new_tokens=num_new_tokens
        )
        if getattr(outputs, "flowcut_state", None) is not None:
            model_kwargs["flowcut_state"] = outputs.flowcut_state
        return model_kwargs

    def _prefill(self, input_ids, generation_config, model_kwargs, is_first_iteration=True):
        if generation_config.prefill_chunk_size is not None and self.model.pruning_enabled():
            raise ValueError(
                "Pruning replaces each image's placeholders and ranks its tokens with the whole prompt in view, so "
                "the prompt must be read in one forward call: pass prefill_chunk_size=None."
            )
        return super()._prefill(input_ids, generation_config, model_kwargs, is_first_iteration=is_first_iteration)


def rotate_half_rope(states: torch.Tensor, cos: torch.Tensor, sin: torch.Tensor) -> torch.Tensor:
    """The standard ("rotate half") rotary embedding, as Llama, Mistral and Qwen2 apply it.

    ``states`` is ``[tokens, heads, head_dim]``; ``cos`` and ``sin`` are ``[tokens, head_dim]``.
    """
    cos, sin = cos.unsqueeze(1), sin.unsqueeze(1)
    first, second = states.chunk(2, dim=-1)
    return states * cos + torch.cat([-second, first], dim=-1) * sin


class FlowCutLLMPruner:
    """FlowCut's LLM stage: after decoder layer ``score_layer``, keep ``target_num`` visual tokens per image.

    Inside that layer's attention, the last prompt token's query (after RoPE) attends to each image's visual keys
    and its value to their values; with the L1 norm of their head-mean values this gives FlowCut's fused score, and
    the top ``target_num`` stay, in order. Images with at most ``target_num`` visual tokens keep them all. The layer
    itself runs unchanged on every token; its q/k/v projections are read with hooks, so any attention backend works.

    After :meth:`select`, :attr:`keep_indices` maps each image index to its kept positions within its visual span.
    ``image_targets`` (image index -> count) overrides ``target_num`` for the images it names (Qwen2-VL sets the
    retained amount per image).
    """

    def __init__(
        self,
        score_layer: int,
        target_num: int,
        apply_rotary: Callable = rotate_half_rope,
        image_targets: dict[int, int] | None = None,
    ):
        self.score_layer = score_layer
        self.target_num = target_num
        self.image_targets = dict(image_targets or {})
        self.apply_rotary = apply_rotary
        self.keep_indices: dict[int, torch.Tensor] = {}
        self._projections: tuple[nn.Module, list] | None = None

    @property
    def group_starts(self) -> tuple[int, int]:
        return (0, self.score_layer + 1)

    @contextmanager
    def observe(self, layer_idx: int, layer: nn.Module):
        if layer_idx != self.score_layer:
            yield
            return
        attention = layer.self_attn
        with record_module_outputs(attention.q_proj, attention.k_proj, attention.v_proj) as captured:
            yield
        self._projections = (attention, captured)

    def select(self, next_layer: int, layout: TokenLayout, position_embeddings) -> torch.Tensor:
        if self._projections is None:
            raise RuntimeError(f"decoder layer {self.score_layer} did not run before the LLM-stage selection")
        attention, (queries, keys, values) = self._projections
        self._projections = None
        head_dim = attention.head_dim
        batch, length = layout.mask.shape
        queries = queries.view(batch, length, -1, head_dim).float()
        keys = keys.view(batch, length, -1, head_dim).float()
        values = values.view(batch, length, -1, head_dim).float()
        group_size = queries.shape[2] // keys.shape[2]
        cos, sin = (table.float().expand(batch, -1, -1) for table in position_embeddings)
        image_index = layout.info[IMAGE_INDEX].to(keys.device)
        is_anchor = layout.info[IS_ANCHOR].to(keys.device)
        keep = layout.mask.clone().to(keys.device)
        with torch.no_grad():
            for row in range(batch):
                images = image_index[row][image_index[row] >= 0].unique().tolist()
                if not images:
                    continue
                anchor = is_anchor[row].nonzero().squeeze(-1)
                if anchor.numel() != 1:
                    raise RuntimeError("a prompt with images has no unique last prompt token to score with")
                query = self.apply_rotary(queries[row, anchor], cos[row, anchor], sin[row, anchor])
                query_value = values[row, anchor].repeat_interleave(group_size, dim=1)
                for image in images:
                    columns = (image_index[row] == image).nonzero().squeeze(-1)
                    target = self.image_targets.get(image, self.target_num)
                    if columns.numel() <= target:
                        self.keep_indices[image] = torch.arange(columns.numel(), device=columns.device)
                        continue
                    # repeat_kv: every query head reads its key/value group's head, as the attention does.
                    image_keys = self.apply_rotary(keys[row, columns], cos[row, columns], sin[row, columns])
                    image_keys = image_keys.repeat_interleave(group_size, dim=1)
                    image_values = values[row, columns].repeat_interleave(group_size, dim=1)
                    signals = compute_layer_signals(
                        query,
                        image_keys.unsqueeze(0),
                        image_values.unsqueeze(0),
                        scaling=attention.scaling,
                        num_prefix_tokens=0,
                        value_global=query_value,
                        semantic_scaling=attention.scaling,
                    )
                    kept = top_k_in_order(fused_score(signals)[0], target)
                    keep[row, columns] = False
                    keep[row, columns[kept]] = True
                    self.keep_indices[image] = kept
        return keep.to(layout.mask.device)


__all__ = [
    "FlowCutLLMPruner",
    "IMAGE_INDEX",
    "IMPORTANCE",
    "INPUT_POSITION",
    "IS_ANCHOR",
    "LayerGroupsGenerationMixin",
    "LayerGroupsOutput",
    "LayerGroupsState",
    "ROPE_POSITION",
    "TokenDropper",
    "TokenLayout",
    "check_placeholder_counts",
    "check_stock_continuation",
    "check_supported_cache",
    "continue_layer_groups",
    "continuation_layout",
    "forward_route",
    "follow_input_positions",
    "left_aligned_index",
    "placeholder_positions",
    "resolved_use_cache",
    "rotate_half_rope",
    "run_layer_groups",
    "splice_image_features",
]
