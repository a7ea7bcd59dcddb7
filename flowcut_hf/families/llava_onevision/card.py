"""LLaVA-OneVision's wording in a FlowCut variant's model card (a VFlowOpt variant's card is the method's own).

Jinja fragments rendered with the card's template values (see :func:`flowcut_hf.hub_cards.render_variant_card`):
``kept_tokens``, ``unpruned_tokens``, ``token_cut_percent``, ``half_kept_tokens``, ``retain_percent``,
``vision_percent``, ``llm_prune_layer``, ``family_name``, ``base_link``, ``base_link_capitalized``.
"""

from __future__ import annotations

INTRO = """\
{{ base_link_capitalized }} with [FlowCut](https://arxiv.org/abs/2505.19536) visual-token pruning:
each image reaches the language model's later layers as **{{ kept_tokens }}** visual tokens instead of all of its
packed tokens ({{ unpruned_tokens }} for a square image on the 2x2 grid). FlowCut is training-free: it runs at
inference time and needs no calibration data.

## What changed

- **Visual tokens per image: {{ kept_tokens }} after decoder layer {{ llm_prune_layer }} (an image with fewer is kept whole).** The stock count follows the image size (729 per 384 px crop, the anyres_max_9 grid interpolated, one newline per row). FlowCut keeps {{ half_kept_tokens }} patches of every crop in the SigLIP vision encoder, in the stock packed order, then {{ kept_tokens }} of each image's visual tokens after decoder layer {{ llm_prune_layer }} of the language model.
- **Weights: unchanged.** They are the weights of {{ base_link }}; FlowCut adds no parameters and nothing was trained.
- **Added:** the FlowCut settings in `config.json` (`pruning_method` and the `flowcut_*` fields, see [Settings](#settings)), remote-code `.py` files that implement the pruning, and an `auto_map` that points the Auto classes at them. The processor is the stock `LlavaOnevisionProcessor`, unchanged: the model replaces each image's placeholders by its kept tokens itself."""

HOW_IT_WORKS = """\
FlowCut prunes in two stages. SigLIP has no `[CLS]` token, so for every crop the mean of its patches' queries acts as
the global query: at each layer a patch scores its attention from that query times the magnitude of its value
vector, a running average of that score decides, every second layer, which patches to drop (more when the attention
is concentrated), until {{ half_kept_tokens }} patches per crop are left at the layer the image features are read
from. The kept tokens follow the stock packed order. Inside the language model, after decoder layer
{{ llm_prune_layer }}, the last token of the prompt scores each image's visual tokens by its attention to them and
the similarity and magnitude of their values, and the best {{ kept_tokens }} per image stay: the later layers see,
and cache, only those."""

UNPRUNED_ALL = "of the"
"""The stock model's visual tokens per image, in a sentence ("all of the visual tokens per image")."""

UNPRUNED_CELL = "all"
"""The same in the FLOPs table."""


def card_text() -> dict[str, str]:
    return {"intro": INTRO, "how_it_works": HOW_IT_WORKS, "unpruned_all": UNPRUNED_ALL, "unpruned_cell": UNPRUNED_CELL}
