"""FlowCut scoring and selection in pure torch, shared by every model family.

The method (FlowCut, NeurIPS 2025) prunes visual tokens progressively inside the vision encoder. After every
encoder layer it scores each patch token by how much information flows to it from the global (CLS) token, keeps an
exponential moving average of that score, and at every second layer drops the lowest-scoring patches; the number
dropped adapts to how concentrated the CLS attention is. The last pruning layer cuts straight to the target.

This module reproduces the authors' reference code (``flowcut`` 1.0.2 on PyPI) selection for selection. It never
needs the N x N attention matrix: everything it uses is O(N) per layer and is computed from the layer's own
query/key/value tensors, so it works with eager, sdpa and flash attention alike.

Deliberate departures from the reference code, none of which change a selection in float32:

* the per-layer signals are computed in float32 whatever the model dtype, and the entropy uses ``xlogy`` so that
  probabilities that underflow to zero in fp16/bf16 contribute 0 instead of NaN (the reference crashes there);
* nothing is patched: model adapters call :func:`compute_layer_signals` and :meth:`FlowCutSelector.after_layer`.

Batches: as in the reference code, the number of tokens dropped at a layer is shared by the whole batch (the most
aggressive image decides, ``max`` over the batch). Every image therefore keeps the same number of tokens at every
layer, which keeps the batch rectangular, but which tokens an image keeps can depend on its batch-mates. Run images
one at a time if you need per-image schedules.
"""

from __future__ import annotations

import math
from contextlib import contextmanager
from dataclasses import dataclass, field

import torch
from torch import nn


@contextmanager
def record_module_outputs(*modules: nn.Module):
    """Records the outputs of ``modules`` during the block, per instance, and removes the hooks afterwards."""
    captured: list[torch.Tensor | None] = [None] * len(modules)

    def make_hook(position: int):
        def hook(_module, _inputs, output):
            captured[position] = output

        return hook

    handles = [module.register_forward_hook(make_hook(i)) for i, module in enumerate(modules)]
    try:
        yield captured
    finally:
        for handle in handles:
            handle.remove()


@dataclass
class LayerSignals:
    """The O(N) per-layer quantities FlowCut scores with, for the patch tokens only (global token excluded).

    All tensors are float32 and shaped ``[batch, num_patches]``.
    """

    cls_attention: torch.Tensor
    """Head-mean attention of the global token to each patch (softmax taken over all tokens, global included)."""
    semantic_attention: torch.Tensor
    """Head-mean softmax of the unscaled dot product between the global token's value and each value."""
    value_l1: torch.Tensor
    """L1 norm of the head-averaged value vector of each patch."""


def compute_layer_signals(
    query_global: torch.Tensor,
    keys: torch.Tensor,
    values: torch.Tensor,
    scaling: float,
    num_prefix_tokens: int = 1,
    value_global: torch.Tensor | None = None,
    semantic_scaling: float = 1.0,
) -> LayerSignals:
    """Computes FlowCut's per-layer signals from one attention layer's projections, in O(N).

    Keys and values are taken token-major, as the projections produce them, so no transposed copy is made.

    Args:
        query_global: the global token's query, ``[batch, heads, head_dim]``, before scaling.
        keys: ``[batch, seq, heads, head_dim]``.
        values: ``[batch, seq, heads, head_dim]``.
        scaling: the attention scale (``head_dim ** -0.5`` for CLIP).
        num_prefix_tokens: how many leading tokens are not patches (1 for the CLS token).
        value_global: the global token's value ``[batch, heads, head_dim]``; by default the first token's (CLS).
            The LLM stage passes the text query token's value, which is not among ``values``.
        semantic_scaling: scale of the value-value product; 1 in the CLIP stage (the reference has no 1/sqrt(d)
            there), the attention scale in the LLM stage.
    """
    query_global = query_global.float()
    keys = keys.float()
    values = values.float()
    value_global = values[:, 0] if value_global is None else value_global.float()
    # The reference scales q before the product (transformers 4.37 CLIP); doing the same keeps float32 rounding equal.
    cls_logits = torch.einsum("bshd,bhd->bhs", keys, query_global * scaling)
    cls_attention = cls_logits.softmax(dim=-1).mean(dim=1)
    semantic_logits = torch.einsum("bshd,bhd->bhs", values, value_global)
    if semantic_scaling != 1.0:
        semantic_logits = semantic_logits * semantic_scaling
    semantic_attention = semantic_logits.softmax(dim=-1).mean(dim=1)
    value_l1 = values.mean(dim=2).abs().sum(dim=-1)
    return LayerSignals(
        cls_attention=cls_attention[:, num_prefix_tokens:],
        semantic_attention=semantic_attention[:, num_prefix_tokens:],
        value_l1=value_l1[:, num_prefix_tokens:],
    )


def mean_query_signals(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, scaling: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """FlowCut's signals for an encoder without a global token (Qwen2-VL's ViT), in O(N).

    The global query is the mean of the tokens' own (rotary-embedded) queries, per head. Takes one image's
    ``[tokens, heads, head_dim]`` projections; returns float32 ``(attention, value_l1)``, each ``[tokens]``: the
    head-mean softmax of the global query over the tokens' keys, and the L1 norm of each head-mean value.
    """
    query_global = queries.float().mean(dim=0)
    logits = torch.einsum("shd,hd->hs", keys.float(), query_global * scaling)
    attention = logits.softmax(dim=-1).mean(dim=0)
    value_l1 = values.float().mean(dim=1).abs().sum(dim=-1)
    return attention, value_l1


def fused_score(signals: LayerSignals) -> torch.Tensor:
    """FlowCut's multi-criteria score: (normalised CLS attention + normalised semantic attention) x value L1."""
    attention = signals.cls_attention / signals.cls_attention.sum(dim=-1, keepdim=True)
    semantic = signals.semantic_attention / signals.semantic_attention.sum(dim=-1, keepdim=True)
    return (attention + semantic) * signals.value_l1


def top_k_in_order(score: torch.Tensor, k: int) -> torch.Tensor:
    """Indices of the ``k`` highest scores along the last dimension, ascending (so the survivors keep their order)."""
    return score.topk(k, dim=-1).indices.sort(dim=-1).values


def attention_entropy_ratio(cls_attention: torch.Tensor) -> torch.Tensor:
    """Entropy of the CLS attention over the patches divided by its maximum ``log(N)``, per image, in [0, 1]."""
    probabilities = cls_attention.float()
    probabilities = probabilities / probabilities.sum(dim=-1, keepdim=True)
    # xlogy(0, 0) == 0: underflowed probabilities must not turn the entropy into NaN.
    entropy = -torch.special.xlogy(probabilities, probabilities).sum(dim=-1)
    return entropy / math.log(probabilities.shape[-1])


def adaptive_prune_count(cls_attention: torch.Tensor, remaining_layers: int, target_patches: int) -> int:
    """How many patches to drop at a pruning layer: ``round((N - T) / sqrt(L) * (1 - r_H^2))``.

    ``N`` is the current patch count, ``T`` the target, ``L`` the number of remaining layers and ``r_H`` the
    normalised entropy of the CLS attention. Rounding is half-to-even, as ``torch.round``. The count is the batch
    maximum, as in the reference code, so every image of a batch keeps the same number of tokens.
    """
    num_patches = cls_attention.shape[-1]
    ratio = attention_entropy_ratio(cls_attention)
    count = (num_patches - target_patches) / math.sqrt(remaining_layers) * (1 - ratio**2)
    return int(torch.round(count.max()).item())


@dataclass
class FlowCutSelector:
    """Progressive selection state for one batch of images passing through one vision encoder.

    A model adapter runs the encoder layer by layer; after each layer with index ``layer_idx`` it computes the
    layer's :class:`LayerSignals` (only while :attr:`active`) and calls :meth:`after_layer`, which may return a
    shorter hidden-state tensor.

    Args:
        target_length: tokens to keep, prefix (CLS) tokens included.
        last_layer: index of the encoder layer whose output is the feature the model reads. Pruning finishes at
            the layer before it: the cut to ``target_length`` happens at ``last_layer - 1``.
        batch_size / num_patches / device: the shape of the input.
        prune_interval: prune at every ``prune_interval``-th layer, counted back from the final cut.
        history_weight: weight of the running score in the cumulative update (0.5 in the paper).
        num_prefix_tokens: leading non-patch tokens, kept unconditionally (1 for CLS).
    """

    target_length: int
    last_layer: int
    batch_size: int
    num_patches: int
    device: torch.device | str = "cpu"
    prune_interval: int = 2
    history_weight: float = 0.5
    num_prefix_tokens: int = 1
    cumulative_score: torch.Tensor | None = field(init=False, default=None)
    keep_indices: torch.Tensor = field(init=False)
    sequence_lengths: list[int] = field(default_factory=list)
    """The sequence length (prefix tokens included) each encoder layer ran on, in order."""

    def __post_init__(self) -> None:
        self.keep_indices = torch.arange(self.num_patches, device=self.device).expand(self.batch_size, -1)

    @property
    def current_length(self) -> int:
        return self.keep_indices.shape[1] + self.num_prefix_tokens

    @property
    def active(self) -> bool:
        """Whether the next layer still needs signals (the sequence is longer than the target)."""
        return self.current_length > self.target_length

    def record_layer(self, sequence_length: int) -> None:
        self.sequence_lengths.append(sequence_length)

    def after_layer(self, layer_idx: int, hidden_states: torch.Tensor, signals: LayerSignals) -> torch.Tensor:
        """Updates the cumulative score with this layer's signals and prunes if this is a pruning layer."""
        kept = self.step(layer_idx, fused_score(signals), signals.cls_attention)
        if kept is None:
            return hidden_states
        prefix = hidden_states[:, : self.num_prefix_tokens]
        patches = hidden_states[:, self.num_prefix_tokens :]
        gather_index = kept.to(hidden_states.device).unsqueeze(-1).expand(-1, -1, hidden_states.shape[-1])
        return torch.cat([prefix, patches.gather(1, gather_index)], dim=1)

    def step(self, layer_idx: int, score: torch.Tensor, global_attention: torch.Tensor) -> torch.Tensor | None:
        """Folds one layer's ``score`` ``[batch, patches]`` into the cumulative score and, at a pruning layer, selects.

        ``global_attention`` (the global token's attention over the current patches) sets the adaptive count.
        Returns the kept positions among the current patches, ascending, ``[batch, kept]``, or None if nothing is
        dropped at this layer; :attr:`keep_indices` and the cumulative score follow the selection.
        """
        if self.cumulative_score is None:
            # The reference starts from the first score itself, not from half of it.
            self.cumulative_score = score
        else:
            self.cumulative_score = self.history_weight * self.cumulative_score + (1 - self.history_weight) * score

        remaining_layers = self.last_layer - layer_idx - 1
        if remaining_layers < 0 or remaining_layers % self.prune_interval != 0:
            return None

        current_length = self.current_length
        if remaining_layers == 0:
            prune_count = current_length
        else:
            prune_count = adaptive_prune_count(
                global_attention, remaining_layers, self.target_length - self.num_prefix_tokens
            )
        keep_length = max(current_length - prune_count, self.target_length)
        keep_patches = keep_length - self.num_prefix_tokens
        if keep_patches >= current_length - self.num_prefix_tokens:
            return None

        # Sorting keeps the survivors in their order, which is all the position information LLaVA's LLM gets.
        kept = top_k_in_order(self.cumulative_score, keep_patches)
        self.cumulative_score = self.cumulative_score.gather(1, kept)
        self.keep_indices = self.keep_indices.gather(1, kept.to(self.keep_indices.device))
        return kept
