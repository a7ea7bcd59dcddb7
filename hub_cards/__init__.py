"""Model cards (README.md) for exported FlowCut variant repos.

>>> from flowcut_hf.hub_cards import VariantCardInfo, render_variant_card
>>> info = VariantCardInfo(
...     repo_id="me/llava-1.5-7b-hf-flowcut64", base_model="llava-hf/llava-1.5-7b-hf", base_license=None,
...     target_num=64, image_tokens=576, settings={"flowcut_target_num": 64},
...     prefill_flops_unpruned=8.82e12, prefill_flops_pruned=1.95e12)
>>> card = render_variant_card(info)          # huggingface_hub.ModelCard
>>> card.data.flowcut
{'flowcut_target_num': 64}

The body comes from ``templates/flowcut_variant.md`` (a Jinja template for ``ModelCard.from_template``); the
optional evaluation-results JSON schema is documented in :mod:`flowcut_hf.hub_cards.eval_results`.
"""

from .card import (
    BASE_TAGS,
    FLOWCUT_BIBTEX,
    LIBRARY_NAME,
    PIPELINE_TAG,
    TEMPLATE_NAME,
    VariantCardInfo,
    build_card_data,
    render_variant_card,
)
from .eval_results import load_eval_results, parse_eval_results

__all__ = [
    "BASE_TAGS",
    "FLOWCUT_BIBTEX",
    "LIBRARY_NAME",
    "PIPELINE_TAG",
    "TEMPLATE_NAME",
    "VariantCardInfo",
    "build_card_data",
    "load_eval_results",
    "parse_eval_results",
    "render_variant_card",
]
