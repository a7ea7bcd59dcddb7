"""Stage 5 of the exporter: the model card (README.md) of a variant: its settings, the analytic prefill FLOPs against
the unpruned base (from what the variant's check measured, or an upper bound without a check), the base's license and
revision, and evaluation results if given. The family's adapter counts its FlowCut FLOPs
(:meth:`~flowcut_hf.family.FlowCutFamily.card_prefill_flops`) and words its part of the card."""

from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from ..accounting import PrefillFlops, llm_prefill_flops
from ..amounts import image_tokens_per_image
from ..registry import family_for_config
from .options import ExportOptions
from .plan import VariantPlan
from .resolve import ResolvedSource
from .verify import VERIFY_IMAGE_SIZE

MEASURED = "the vision schedule is the one measured on a synthetic image during export"
UPPER_BOUND = "the vision encoder is counted unpruned, an upper bound (the export was not verified)"


def prefill_accounts(variant_config: dict[str, Any], verification: dict[str, Any] | None, prompt_tokens: int):
    """Analytic prefill accounts ``(unpruned, pruned, what they count)`` of a variant, for its card.

    With a verification summary the pruned account uses what the variant did on the check image; without one it is
    an upper bound (the vision encoder counted unpruned).
    """
    family = family_for_config(variant_config)
    config = family.config_from_dict(variant_config)
    if variant_config.get("pruning_method") == "vflowopt":
        return vflowopt_prefill_flops(family, config, variant_config, verification, prompt_tokens)
    unpruned, pruned, what = family.card_prefill_flops(config, variant_config, verification, prompt_tokens, VERIFY_IMAGE_SIZE)
    return unpruned, pruned, what + (MEASURED if verification else UPPER_BOUND)


def vflowopt_prefill_flops(family, config, variant_config: dict[str, Any], verification, prompt_tokens: int):
    """``(unpruned, pruned, what)`` of the LLM prefill of a VFlowOpt variant: its vision tower and projector run
    unchanged, so only the decoder layers' lengths differ (those verified on the check image, or without a
    verification the stage counts of the family's reference image, its unpruned token count, with importance ties
    resolved by the stage rule)."""
    from ..modeling.vflowopt_core import vflowopt_settings

    layers = config.text_config.num_hidden_layers
    if verification and verification.get("layer_lengths"):
        images = verification["placeholders"]
        text = verification["text_tokens"]
        lengths = [prompt_tokens + n - text for n in verification["layer_lengths"]]
        what = f"the LLM, for the {images}-token check image measured during export and a {prompt_tokens}-token prompt"
    else:
        settings = vflowopt_settings(SimpleNamespace(**variant_config))
        images = family.unpruned_image_tokens(config)
        current = images - round(images * (1 - settings.vision_keep))
        bounds, counts = [0, *settings.llm_layers, layers], [current]
        for keep in settings.llm_keeps:
            current -= round(current * (1 - keep))
            counts.append(current)
        lengths = [prompt_tokens + counts[s] for s in range(len(bounds) - 1) for _ in range(bounds[s], bounds[s + 1])]
        what = f"the LLM, for a square {images}-token image and a {prompt_tokens}-token prompt (the export was not verified)"
    unpruned = llm_prefill_flops(config.text_config, [prompt_tokens + images] * layers)
    pruned = llm_prefill_flops(config.text_config, lengths)
    return PrefillFlops(unpruned), PrefillFlops(pruned), what + "; the vision tower and projector run unchanged"


def write_card(
    folder: Path,
    resolved: ResolvedSource,
    plan: VariantPlan,
    verification: dict[str, Any] | None,
    options: ExportOptions,
    variant_folder: Path | None = None,
) -> None:
    """Renders README.md into ``folder``, for the variant in ``variant_folder`` (``folder`` itself by default)."""
    from ..hub_cards import VariantCardInfo, render_variant_card

    variant_folder = variant_folder or folder
    # The variant's own config: it is in the HF layout even when the source was an original-LLaVA checkpoint.
    variant_config = json.loads((variant_folder / "config.json").read_text())
    unpruned, pruned, what = prefill_accounts(variant_config, verification, prompt_tokens=64)
    settings = {
        k: v for k, v in variant_config.items() if k.startswith(("flowcut_", "vflowopt_")) or k == "pruning_method"
    }
    info = VariantCardInfo(
        # Unpushed folders get a placeholder namespace; the snippet is only final once the repo id is known.
        repo_id=plan.repo_id or f"your-namespace/{plan.name}",
        base_model=options.base_model or resolved.base_model,
        base_license=resolved.license,
        base_license_name=resolved.license_name if resolved.license == "other" else None,
        base_license_link=resolved.license_link if resolved.license == "other" else None,
        target_num=plan.target_num,
        retain_ratio=plan.amount.retain_ratio,
        method="vflowopt" if plan.amount.preset is not None else "flowcut",
        budget=plan.amount.preset.budget if plan.amount.preset is not None else None,
        search=plan.amount.preset.search if plan.amount.preset is not None else None,
        preset_note=plan.amount.preset.note if plan.amount.preset is not None else None,
        image_tokens=image_tokens_per_image(resolved.family, variant_config),
        settings=settings,
        family=resolved.family.name,
        prefill_flops_unpruned=float(unpruned.total_flops),
        prefill_flops_pruned=float(pruned.total_flops),
        prefill_flops_note=what,
        base_commit=resolved.commit or resolved.download_commit,
        base_revision_requested=resolved.requested_revision if resolved.requested_revision != resolved.commit else None,
    )
    render_variant_card(info, eval_results_path=options.eval_results or None).save(folder / "README.md")


__all__ = ["prefill_accounts", "vflowopt_prefill_flops", "write_card"]
