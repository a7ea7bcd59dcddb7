"""LLaVA-NeXT's wording in a variant's model card.

Jinja fragments rendered with the card's template values (see :func:`flowcut_hf.hub_cards.render_variant_card`):
``kept_tokens``, ``unpruned_tokens``, ``token_cut_percent``, ``half_kept_tokens``, ``retain_percent``,
``vision_percent``, ``llm_prune_layer``, ``family_name``, ``base_link``, ``base_link_capitalized``.
"""

from __future__ import annotations

INTRO = """\
{{ base_link_capitalized }} with [FlowCut](https://arxiv.org/abs/2505.19536) visual-token pruning:
each image reaches the language model's later layers as **{{ kept_tokens }}** visual tokens instead of **up to
{{ unpruned_tokens }}** (up to {{ token_cut_percent }} fewer). FlowCut is training-free: it runs at inference time
and needs no calibration data.

## What changed

- **Visual tokens per image: up to {{ unpruned_tokens }} → {{ kept_tokens }}.** The stock count depends on the image size (576 for the base image, plus the unpadded anyres grid, plus one newline per grid row; the paper's "2880" is 5 × 576). FlowCut keeps {{ half_kept_tokens }} patches of every anyres crop in the vision encoder, then {{ kept_tokens }} of each image's visual tokens after decoder layer {{ llm_prune_layer }} of the language model.
- **Weights: unchanged.** They are the weights of {{ base_link }}; FlowCut adds no parameters and nothing was trained.
- **Added:** the FlowCut settings in `config.json` (see [Settings](#settings)), remote-code `.py` files that implement the pruning, and an `auto_map` that points the Auto classes at them. The processor is the stock `LlavaNextProcessor`, unchanged: the model replaces each image's placeholders by its kept tokens itself.
"""
"""The card's opening (what the variant keeps) and its "What changed" section, for a FlowCut variant."""

HOW_IT_WORKS = """\
FlowCut prunes in two stages. In the CLIP vision encoder it treats every anyres crop (the base image and each grid
crop) as an information flow that converges on the `[CLS]` token: at each layer it scores every patch token by the
`[CLS]` token's attention to it, the similarity of its value vector to the `[CLS]` value and the magnitude of its
value vector, keeps a running average of that score, and every second layer drops the lowest-scoring patches (more
when the attention is concentrated) until {{ half_kept_tokens }} patches per crop are left. The base crop's tokens
come first; the grid crops' tokens are put back on the full grid, the padding removed, in raster order. Inside the
language model, after decoder layer {{ llm_prune_layer }}, the last token of the prompt scores each image's visual
tokens by its attention to them and the similarity and magnitude of their values, and the best {{ kept_tokens }}
per image stay: the layers up to {{ llm_prune_layer }} see every visual token, the later ones only the kept ones,
which also shortens their KV cache.
"""

UNPRUNED_ALL = "(up to {{ unpruned_tokens }})"
"""The stock model's visual tokens per image, in a sentence ("all {{ ... }} visual tokens per image")."""

UNPRUNED_CELL = "up to {{ unpruned_tokens }}"
"""The same in the FLOPs table."""


def card_text() -> dict[str, str]:
    return {"intro": INTRO, "how_it_works": HOW_IT_WORKS, "unpruned_all": UNPRUNED_ALL, "unpruned_cell": UNPRUNED_CELL}
