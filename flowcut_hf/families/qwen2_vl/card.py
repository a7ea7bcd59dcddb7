"""Qwen2-VL's and Qwen2.5-VL's wording in a variant's model card.

Jinja fragments rendered with the card's template values (see :func:`flowcut_hf.hub_cards.render_variant_card`):
``kept_tokens``, ``unpruned_tokens``, ``token_cut_percent``, ``half_kept_tokens``, ``retain_percent``,
``vision_percent``, ``llm_prune_layer``, ``family_name``, ``base_link``, ``base_link_capitalized``.
"""

from __future__ import annotations

INTRO = """\
{{ base_link_capitalized }} with [FlowCut](https://arxiv.org/abs/2505.19536) visual-token pruning:
each image (or video) reaches the language model's later layers as **{% if retain_percent %}{{ retain_percent }} of its visual tokens{% else %}{{ kept_tokens }} visual tokens{% endif %}**
instead of all of them ({{ token_cut_percent }} fewer{% if not retain_percent %} for an image of {{ unpruned_tokens }} tokens{% endif %}). FlowCut is training-free: it runs at inference time and needs no
calibration data.

## What changed

- **Visual tokens per image: {% if retain_percent %}{{ retain_percent }} of them, rounded, at least one{% else %}{{ kept_tokens }} (an image with fewer is kept whole){% endif %}.** {{ family_name }}'s token count follows the image size (one token per 2x2 merge unit of 28 × 28 pixels, up to {{ unpruned_tokens }}). FlowCut keeps whole 2x2 merge units in the vision encoder ({% if retain_percent %}{{ vision_percent }} of them{% else %}twice the count{% endif %}), so the model's own merger always fuses real 2x2 blocks, then the kept amount after decoder layer {{ llm_prune_layer }} of the language model. Kept tokens keep their true (t, h, w) M-RoPE positions.
- **Weights: unchanged.** They are the weights of {{ base_link }}; FlowCut adds no parameters and nothing was trained.
- **Added:** the FlowCut settings in `config.json` (see [Settings](#settings)), remote-code `.py` files that implement the pruning, and an `auto_map` that points the Auto classes at them. The processor is the stock one, unchanged: the model replaces each image's placeholders by its kept tokens itself.
"""
"""The card's opening (what the variant keeps) and its "What changed" section, for a FlowCut variant."""

HOW_IT_WORKS = """\
FlowCut prunes in two stages. {{ family_name }}'s vision encoder has no `[CLS]` token, so for each image (each video
frame) the mean of its tokens' queries acts as the global query: at each block a patch scores its attention from
that query times the magnitude of its value vector, a 2x2 merge unit the sum of its four patches, and a running
average of that score decides, every second block, which whole units to drop (more when the attention is
concentrated), until {% if retain_percent %}{{ vision_percent }}{% else %}twice the target{% endif %} of the image's units are left after the last block; the
model's own merger then turns each kept unit into one token. Attention never crosses an image, a frame or (on
Qwen2.5-VL) a window. Inside the language model, after decoder layer {{ llm_prune_layer }}, the last token of the
prompt scores each image's tokens by its attention to them and the similarity and magnitude of their values, and
{% if retain_percent %}{{ retain_percent }} of the image's units{% else %}{{ kept_tokens }} tokens per image{% endif %} stay: the later layers see, and cache, only those.
"""

UNPRUNED_ALL = "of the"
"""The stock model's visual tokens per image, in a sentence ("all {{ ... }} visual tokens per image")."""

UNPRUNED_CELL = "all"
"""The same in the FLOPs table."""


def card_text() -> dict[str, str]:
    return {"intro": INTRO, "how_it_works": HOW_IT_WORKS, "unpruned_all": UNPRUNED_ALL, "unpruned_cell": UNPRUNED_CELL}
