"""VFlowOpt's LLM stages on a real decoder: tokens dropped before chosen layers by carried importance, survivors at
their original positions, per-layer KV lengths, exact cached decoding and batch rows independent of each other."""

from __future__ import annotations

import torch
from transformers import Qwen2Config, Qwen2ForCausalLM
from transformers.cache_utils import DynamicCache

from flowcut_hf.modeling.flowcut_llm_stage import (
    IMAGE_INDEX,
    IMPORTANCE,
    INPUT_POSITION,
    IS_ANCHOR,
    ROPE_POSITION,
    TokenLayout,
    continuation_layout,
    run_layer_groups,
)
from flowcut_hf.modeling.vflowopt_core import ImportanceDropper

LAYERS, KEEPS = (2, 4), (0.5, 0.5)
TEXT_BEFORE, VISUAL, TEXT_AFTER = 5, 20, 5


def tiny_decoder():
    config = Qwen2Config(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=6,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256)
    torch.manual_seed(0)
    return Qwen2ForCausalLM(config).eval()


def prompt_layout(model, token_ids: torch.Tensor, importance: torch.Tensor, pad: int = 0) -> TokenLayout:
    """One row per prompt, left-padded by ``pad`` columns: text, VISUAL visual tokens (image 0), text."""
    length = TEXT_BEFORE + VISUAL + TEXT_AFTER
    embeds = model.model.embed_tokens(token_ids)
    mask = torch.ones(1, pad + length, dtype=torch.bool)
    mask[:, :pad] = False
    embeds = torch.cat([torch.zeros(1, pad, embeds.shape[-1]), embeds], dim=1)
    image = torch.full((1, pad + length), -1)
    image[:, pad + TEXT_BEFORE : pad + TEXT_BEFORE + VISUAL] = 0
    scores = torch.zeros(1, pad + length)
    scores[:, pad + TEXT_BEFORE : pad + TEXT_BEFORE + VISUAL] = importance
    positions = (mask.long().cumsum(-1) - 1).clamp(min=0)
    columns = torch.arange(pad + length)[None]
    info = {INPUT_POSITION: columns.masked_fill(~mask, -1), IMAGE_INDEX: image, IS_ANCHOR: torch.zeros_like(mask),
            IMPORTANCE: scores, ROPE_POSITION: positions.masked_fill(~mask, 0)}
    return TokenLayout(embeds, mask, info)


def stack(layouts: list[TokenLayout]) -> TokenLayout:
    width = max(layout.mask.shape[1] for layout in layouts)

    def left_pad(tensor, fill):
        pad = width - tensor.shape[1]
        filler = torch.full((tensor.shape[0], pad, *tensor.shape[2:]), fill, dtype=tensor.dtype)
        return torch.cat([filler, tensor], dim=1)

    return TokenLayout(
        torch.cat([left_pad(l.hidden_states, 0.0) for l in layouts]),
        torch.cat([left_pad(l.mask, False) for l in layouts]),
        {key: torch.cat([left_pad(l.info[key], {INPUT_POSITION: -1, IMAGE_INDEX: -1}.get(key, 0)) for l in layouts])
         for key in layouts[0].info},
    )


def prefill(model, layout: TokenLayout, cache=None):
    dropper = ImportanceDropper(LAYERS, KEEPS)
    with torch.no_grad():
        return run_layer_groups(model.model, layout, dropper.group_starts, None, cache=cache,
                                use_cache=cache is not None, dropper=dropper, prompt_length=layout.mask.shape[1])


def test_stages_drop_by_importance_before_their_layers_and_keep_original_positions():
    model = tiny_decoder()
    ids = torch.randint(0, 64, (1, TEXT_BEFORE + VISUAL + TEXT_AFTER), generator=torch.Generator().manual_seed(1))
    importance = torch.rand(VISUAL, generator=torch.Generator().manual_seed(2))
    seen = []
    hook = model.model.rotary_emb.register_forward_hook(
        lambda _m, _a, kwargs, _o: seen.append(kwargs["position_ids"]), with_kwargs=True
    )
    try:
        cache = DynamicCache(config=model.config)
        output = prefill(model, prompt_layout(model, ids, importance), cache)
    finally:
        hook.remove()
    assert [cache.get_seq_length(layer) for layer in range(6)] == [30, 30, 20, 20, 15, 15]
    order = importance.argsort(descending=True)
    survivors_2 = sorted((order[:10] + TEXT_BEFORE).tolist())
    expected_2 = list(range(TEXT_BEFORE)) + survivors_2 + list(range(25, 30))
    assert seen[1][0].tolist() == expected_2, "survivors keep their original positions before layer 2"
    stage_2 = importance[order[:10]]
    kept_last = sorted((order[:10][stage_2.argsort(descending=True)[:5]] + TEXT_BEFORE).tolist())
    assert seen[2][0].tolist() == list(range(TEXT_BEFORE)) + kept_last + list(range(25, 30))
    assert output.token_info[INPUT_POSITION][0].tolist() == seen[2][0].tolist()


def test_cached_decoding_equals_recomputing_the_prompt_and_rows_decode_as_alone():
    model = tiny_decoder()
    generator = torch.Generator().manual_seed(3)
    prompts = [torch.randint(0, 64, (1, 30), generator=generator) for _ in range(2)]
    importances = [torch.rand(VISUAL, generator=generator) for _ in range(2)]

    def greedy(layouts, steps=4):
        layout = stack(layouts)
        cache = DynamicCache(config=model.config)
        output = prefill(model, layout, cache)
        tokens = []
        attention_mask = layout.mask
        for _ in range(steps):
            token = model.lm_head(output.last_hidden_state[:, -1]).argmax(-1, keepdim=True)
            tokens.append(token)
            attention_mask = torch.cat([attention_mask, torch.ones_like(token, dtype=torch.bool)], dim=1)
            with torch.no_grad():
                output = run_layer_groups(model.model, continuation_layout(model.model.embed_tokens(token), attention_mask),
                                          output.state.group_starts, output.state, cache=cache, use_cache=True)
        return torch.cat(tokens, dim=1)

    def uncached(ids, importance, steps=4):
        generated = []
        for _ in range(steps):
            layout = prompt_layout(model, ids, importance)
            if generated:
                extra = torch.cat(generated, dim=1)
                embeds = torch.cat([layout.hidden_states, model.model.embed_tokens(extra)], dim=1)
                n = extra.shape[1]
                info = {key: torch.cat([value, torch.full((1, n), {IMAGE_INDEX: -1}.get(key, 0), dtype=value.dtype)], 1)
                        for key, value in layout.info.items()}
                info[ROPE_POSITION][0, -n:] = torch.arange(30, 30 + n)
                info[INPUT_POSITION][0, -n:] = torch.arange(30, 30 + n)
                layout = TokenLayout(embeds, torch.ones(1, 30 + n, dtype=torch.bool), info)
            output = prefill(model, layout)
            generated.append(model.lm_head(output.last_hidden_state[:, -1]).argmax(-1, keepdim=True))
        return torch.cat(generated, dim=1)

    alone = [greedy([prompt_layout(model, ids, imp)]) for ids, imp in zip(prompts, importances)]
    assert torch.equal(alone[0], uncached(prompts[0], importances[0])), "cached decoding equals recomputation"
    padded = [prompt_layout(model, prompts[0], importances[0], pad=3), prompt_layout(model, prompts[1], importances[1])]
    batch = greedy(padded)
    assert torch.equal(batch[0], alone[0][0]) and torch.equal(batch[1], alone[1][0]), "each row decodes as alone"
