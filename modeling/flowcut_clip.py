"""FlowCut's vision stage on a stock CLIP vision tower, shared by the LLaVA families (1.5 and NeXT).

The tower's own layers run unchanged, through whichever attention backend they are configured with. Each layer's
q/k/v projections are read with forward hooks registered on this instance for the duration of one layer call, and
:mod:`flowcut_core` turns them into FlowCut's O(N) signals, so no attention matrix is ever requested.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from .flowcut_core import FlowCutSelector, LayerSignals, compute_layer_signals, record_module_outputs
from .flowcut_settings import FlowCutSettings


def num_image_patches(vision_config) -> int:
    return (vision_config.image_size // vision_config.patch_size) ** 2


def feature_layer_index(vision_feature_layer: int, num_layers: int) -> int:
    """Index of the encoder layer whose output LLaVA reads (``hidden_states[k]`` is the output of layer ``k - 1``)."""
    if isinstance(vision_feature_layer, bool) or not isinstance(vision_feature_layer, int):
        raise ValueError(
            f"FlowCut supports a single vision_feature_layer (an int such as -2), got {vision_feature_layer!r}. "
            "Set flowcut_enabled=False to use multi-layer features unpruned."
        )
    layer = vision_feature_layer - 1 if vision_feature_layer >= 0 else num_layers + vision_feature_layer
    if not 1 <= layer < num_layers:
        raise ValueError(
            f"vision_feature_layer={vision_feature_layer} selects encoder layer {layer}; FlowCut needs at least two "
            f"encoder layers before the feature layer (the encoder has {num_layers})."
        )
    return layer


def run_clip_layer(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
    """One stock (transformers) CLIP encoder layer, without an attention mask."""
    return layer(hidden_states, None)


def clip_signals(
    queries: torch.Tensor, keys: torch.Tensor, values: torch.Tensor, heads: int, head_dim: int, scaling: float
) -> LayerSignals:
    """FlowCut's signals from one CLIP attention layer's q/k/v projections, each ``[batch, tokens, heads * head_dim]``
    (only the CLS token's query is read)."""
    batch, length, _ = keys.shape
    with torch.no_grad():
        return compute_layer_signals(
            queries[:, 0].reshape(batch, heads, head_dim),
            keys.reshape(batch, length, heads, head_dim),
            values.reshape(batch, length, heads, head_dim),
            scaling=scaling,
        )


def clip_layer_with_signals(layer: nn.Module, hidden_states: torch.Tensor) -> tuple[torch.Tensor, LayerSignals]:
    """Runs one stock CLIP encoder layer and returns its output with FlowCut's O(N) signals."""
    attention = layer.self_attn
    with record_module_outputs(attention.q_proj, attention.k_proj, attention.v_proj) as captured:
        output = layer(hidden_states, None)
    queries, keys, values = captured
    return output, clip_signals(queries, keys, values, attention.num_heads, attention.head_dim, attention.scale)


def encode_clip_with_flowcut(
    vision_tower: nn.Module,
    pixel_values: torch.Tensor,
    feature_layer: int,
    target_length: int,
    settings: FlowCutSettings,
    layer_with_signals: Callable[[nn.Module, torch.Tensor], tuple[torch.Tensor, LayerSignals]] = clip_layer_with_signals,
    run_layer: Callable[[nn.Module, torch.Tensor], torch.Tensor] = run_clip_layer,
) -> tuple[torch.Tensor, torch.Tensor, list[int]]:
    """Runs a CLIP vision tower up to ``feature_layer`` with progressive FlowCut pruning.

    ``layer_with_signals`` and ``run_layer`` run one encoder layer (with and without reading its signals); the defaults
    take transformers' CLIP, and a serving engine passes its own (vLLM's CLIP fuses q, k and v in one projection).

    All images of ``pixel_values`` share one prune count per layer (see :mod:`flowcut_core`). Returns the feature
    layer's hidden states (CLS first, ``target_length`` tokens, or all of them if ``target_length`` is not below the
    encoder's length), the kept patch indices ``[batch, kept]`` and the per-layer sequence lengths.
    """
    vision_model = getattr(vision_tower, "vision_model", vision_tower)
    hidden_states = vision_model.embeddings(pixel_values)
    hidden_states = vision_model.pre_layrnorm(hidden_states)
    batch_size, sequence_length, _ = hidden_states.shape
    selector = FlowCutSelector(
        target_length=target_length,
        last_layer=feature_layer,
        batch_size=batch_size,
        num_patches=sequence_length - 1,
        device=hidden_states.device,
        prune_interval=settings.prune_interval,
        history_weight=settings.history_weight,
    )
    # Layers after the feature layer would be thrown away by LLaVA, so they never run.
    for layer_idx, layer in enumerate(vision_model.encoder.layers[: feature_layer + 1]):
        selector.record_layer(hidden_states.shape[1])
        if selector.active:
            hidden_states, signals = layer_with_signals(layer, hidden_states)
            hidden_states = selector.after_layer(layer_idx, hidden_states, signals)
        else:
            hidden_states = run_layer(layer, hidden_states)
    return hidden_states, selector.keep_indices, selector.sequence_lengths


def check_clip_vision_tower(vision_config) -> None:
    """FlowCut's vision stage reads a CLS token and CLIP's layer layout; other towers get a clear error."""
    vision_type = getattr(vision_config, "model_type", None)
    if vision_type not in ("clip_vision_model", "clip"):
        raise ValueError(f"FlowCut's LLaVA adapters need a CLIP vision tower, this model has {vision_type!r}.")


__all__ = [
    "check_clip_vision_tower",
    "clip_layer_with_signals",
    "clip_signals",
    "encode_clip_with_flowcut",
    "feature_layer_index",
    "num_image_patches",
    "run_clip_layer",
]
