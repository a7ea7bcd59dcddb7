"""LLaVA-1.5's wording in a variant's model card.

Jinja fragments rendered with the card's template values (see :func:`flowcut_hf.hub_cards.render_variant_card`):
``kept_tokens``, ``unpruned_tokens``, ``token_cut_percent``, ``half_kept_tokens``, ``retain_percent``,
``vision_percent``, ``llm_prune_layer``, ``family_name``, ``base_link``, ``base_link_capitalized``.
"""

from __future__ import annotations

INTRO = """\
{{ base_link_capitalized }} with [FlowCut](https://arxiv.org/abs/2505.19536) visual-token pruning:
each image reaches the language model as **{{ kept_tokens }}** visual tokens instead of **{{ unpruned_tokens }}**
({{ token_cut_percent }} fewer). FlowCut is training-free: it runs at inference time and needs no calibration data.

## What changed

- **Visual tokens per image: {{ unpruned_tokens }} → {{ kept_tokens }}.** FlowCut chooses which patch tokens to keep, separately for every image.
- **Weights: unchanged.** They are the weights of {{ base_link }}; FlowCut adds no parameters and nothing was trained.
- **Added:** the FlowCut settings in `config.json` (see [Settings](#settings)), remote-code `.py` files that implement the pruning, an `auto_map` that points the Auto classes at them, and a processor that inserts {{ kept_tokens }} image placeholders per image to match.
"""
"""The card's opening (what the variant keeps) and its "What changed" section, for a FlowCut variant."""

HOW_IT_WORKS = """\
FlowCut treats the CLIP vision encoder as an information flow that converges on the `[CLS]` token: at each layer it
scores every patch token by combining the `[CLS]` token's attention to it, the similarity of its value vector to the
`[CLS]` value, and the magnitude of its value vector, and keeps a running average of that score across layers.
Every second layer it drops the lowest-scoring patches, cutting more when the `[CLS]` attention is concentrated (low
entropy) and less when it is spread out, until exactly {{ kept_tokens }} patch tokens are left before the layer
{{ family_name }} reads its image features from, so the language model sees {{ kept_tokens }} tokens per image instead
of {{ unpruned_tokens }}.
"""

UNPRUNED_ALL = "{{ unpruned_tokens }}"
"""The stock model's visual tokens per image, in a sentence ("all {{ ... }} visual tokens per image")."""

UNPRUNED_CELL = "{{ unpruned_tokens }}"
"""The same in the FLOPs table."""


def card_text() -> dict[str, str]:
    return {"intro": INTRO, "how_it_works": HOW_IT_WORKS, "unpruned_all": UNPRUNED_ALL, "unpruned_cell": UNPRUNED_CELL}
