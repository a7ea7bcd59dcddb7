"""Render the README.md model card of an exported FlowCut variant repo."""

from __future__ import annotations

import json
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from importlib.resources import files
from pathlib import Path
from typing import Any

import jinja2
from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.utils import validate_repo_id

from ..registry import REGISTRY, family_named
from .eval_results import load_eval_results

TEMPLATE_NAME = "flowcut_variant.md"

LIBRARY_NAME = "transformers"
PIPELINE_TAG = "image-text-to-text"
BASE_TAGS = ("flowcut", "visual-token-pruning")


FLOWCUT_BIBTEX = """\
@inproceedings{tong2025flowcut,
  title         = {{FlowCut}: Rethinking Redundancy via Information Flow for Efficient Vision-Language Models},
  author        = {Tong, Jintao and Jin, Wenwei and Qin, Pengda and Li, Anqi and Zou, Yixiong and Li, Yuhong and Li, Yuhua and Li, Ruixuan},
  booktitle     = {Advances in Neural Information Processing Systems (NeurIPS)},
  year          = {2025},
  eprint        = {2505.19536},
  archivePrefix = {arXiv}
}"""

_TARGET_FIELD = "flowcut_target_num"
_HUB_URL = "https://huggingface.co"
_LICENSE_ID = re.compile(r"^[a-z0-9][a-z0-9.+-]*$")
# The revision is pasted into a Python string literal and a Hub URL; git ref names never need these characters.
_BAD_REVISION = re.compile(r"[\s\"'\\]|[\x00-\x1f]")


@dataclass(frozen=True)
class VariantCardInfo:
    """Facts about one exported variant that its model card states.

    Every field is checked on construction, so a bad value fails at the call site, not halfway through an export.

    Attributes:
        repo_id: the variant's Hub repo, ``"owner/name"``; used verbatim in the usage snippet.
        base_model: the Hub repo whose weights the variant carries unchanged; None when it is not known (the card
            then says so and has no ``base_model`` metadata).
        base_license: the base model's Hub license id (``"apache-2.0"``, ``"llama2"``, ``"other"``), copied into the
            card because the weights keep the base's terms. ``None`` means the base declares none or it could not
            be read: the card then has no ``license`` field and says to follow the base model's terms. The card
            never writes ``"other"`` on its own, because that would claim a custom licence nobody checked.
        base_license_name, base_license_link: the base's ``license_name`` / ``license_link``; allowed only with
            ``base_license="other"``, as on the Hub. A relative link (``"LICENSE"``) points into the base repo and
            is rewritten to an absolute URL there, because the variant repo need not hold that file.
        target_num: visual tokens the variant keeps per image (K); None for a variant set by ``retain_ratio``.
        retain_ratio: for families whose token count follows the image size: the share of each image's tokens the
            variant keeps, in (0, 1).
        method: ``"flowcut"`` or ``"vflowopt"`` (then neither ``target_num`` nor ``retain_ratio``).
        budget: VFlowOpt: the share of visual tokens kept, averaged over the decoder layers, if known.
        search: VFlowOpt: how a searched preset was found (``budget``, ``trials``, ``data``, ``objective``, ...).
        preset_note: VFlowOpt: where a released preset's settings come from (one sentence), instead of the default.
        base_commit: the commit of the base repo the weights were exported from (recorded in the body and as
            ``flowcut.base_revision``: ``base_model`` can only hold the repo id).
        base_revision_requested: the ``--revision`` it was asked for as (a branch or tag), if any.
        image_tokens: visual tokens per image without pruning (N, 576 for LLaVA-1.5 at 336 px; for LLaVA-NeXT the
            most an image can have, 2928 with the standard grid); ``K < N``.
        settings: the FlowCut fields of the variant's ``config.json``, name → JSON value. Written as the card's
            ``flowcut:`` block and settings table. ``flowcut_target_num`` is added if absent and must equal
            ``target_num`` if present.
        family: the model family's name in the registry (:data:`flowcut_hf.registry.REGISTRY`; by default its
            first); also a tag. Its adapter words its part of the card (:meth:`flowcut_hf.family.FlowCutFamily.card_text`).
        revision: a commit hash or tag of the variant repo to pin in the usage snippet. ``None`` shows
            ``"main"`` with a note to pin a commit (the README is usually written before that commit exists).
        prefill_flops_unpruned, prefill_flops_pruned: analytic prefill FLOPs of the base and of the variant for
            the same input; give both, or give ``prefill_flops_reduction`` alone.
        prefill_flops_reduction: fraction of prefill FLOPs saved, in ``[0, 1)``; derived from the two numbers
            when they are given (and then must agree with them).
        prefill_flops_note: what the FLOPs numbers count, e.g. ``"one 336x336 image and 64 text tokens"``.
        base_citation: the base model's BibTeX entry, shown under the FlowCut one.
    """

    repo_id: str
    base_model: str | None
    base_license: str | None
    target_num: int | None
    image_tokens: int
    settings: Mapping[str, Any] = field(default_factory=dict)
    family: str | None = None
    revision: str | None = None
    prefill_flops_unpruned: float | None = None
    prefill_flops_pruned: float | None = None
    prefill_flops_reduction: float | None = None
    prefill_flops_note: str | None = None
    base_license_name: str | None = None
    base_license_link: str | None = None
    base_citation: str | None = None
    retain_ratio: float | None = None
    method: str = "flowcut"
    budget: float | None = None
    search: Mapping[str, Any] | None = None
    preset_note: str | None = None
    base_commit: str | None = None
    base_revision_requested: str | None = None

    def __post_init__(self) -> None:
        _check_repo_id("repo_id", self.repo_id)
        if self.base_model is not None:
            _check_repo_id("base_model", self.base_model)
        if self.repo_id == self.base_model:
            raise ValueError(f"repo_id must differ from base_model, both are {self.repo_id!r}")

        if self.base_license is not None and not (
            isinstance(self.base_license, str) and _LICENSE_ID.match(self.base_license)
        ):
            raise ValueError(
                f"base_license must be a Hub license id such as 'apache-2.0' (lowercase, no spaces) or None,"
                f" got {self.base_license!r}"
            )
        for name in ("base_license_name", "base_license_link"):
            value = getattr(self, name)
            if value is None:
                continue
            if self.base_license != "other":
                raise ValueError(
                    f"{name} is only valid with base_license='other', got base_license={self.base_license!r}"
                )
            if not isinstance(value, str) or not value.strip():
                raise ValueError(f"{name} must be a non-empty string, got {value!r}")

        if self.family is None:
            object.__setattr__(self, "family", REGISTRY[0].name)
        family = family_named(self.family)  # a ValueError naming the known families otherwise
        if self.method not in ("flowcut", "vflowopt"):
            raise ValueError(f"method must be 'flowcut' or 'vflowopt', got {self.method!r}")
        if self.method == "vflowopt":
            if self.target_num is not None or self.retain_ratio is not None:
                raise ValueError("a VFlowOpt variant has no target_num or retain_ratio: its settings say what it keeps")
            if self.budget is not None and not (_is_real(self.budget) and 0 < self.budget < 1):
                raise ValueError(f"budget must be a share in (0, 1), got {self.budget!r}")
        elif (self.target_num is None) == (self.retain_ratio is None):
            raise ValueError("give exactly one of target_num and retain_ratio")
        if self.retain_ratio is not None:
            if "retain_ratio" not in family.amount_kinds:
                raise ValueError(f"retain_ratio applies to families whose token count follows the image size; a {self.family} variant keeps target_num")
            if not _is_real(self.retain_ratio) or not 0 < self.retain_ratio < 1:
                raise ValueError(f"retain_ratio must be a share in (0, 1), got {self.retain_ratio!r}")
        for name in ("target_num", "image_tokens") if self.target_num is not None else ("image_tokens",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ValueError(f"{name} must be a positive int, got {value!r}")
        if self.target_num is not None and self.target_num >= self.image_tokens:
            raise ValueError(
                f"target_num ({self.target_num}) must be smaller than image_tokens ({self.image_tokens}),"
                " otherwise nothing is pruned"
            )

        for name in ("base_commit", "base_revision_requested"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value or _BAD_REVISION.search(value)):
                raise ValueError(f"{name} must be a commit hash, tag or branch name without spaces or quotes, got {value!r}")
        if self.revision is not None and (
            not isinstance(self.revision, str) or not self.revision or _BAD_REVISION.search(self.revision)
        ):
            raise ValueError(
                f"revision must be a commit hash, tag or branch name without spaces or quotes, got {self.revision!r}"
            )

        # Freeze the settings as JSON: it rejects what YAML could not read back as the same value (tuples, numpy
        # scalars, NaN) and detaches the card from later changes to the caller's dict.
        object.__setattr__(self, "settings", _normalise_settings(self.settings, self.target_num))

        self._check_flops()

        for name in ("prefill_flops_note", "base_citation"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, str) or not value.strip()):
                raise ValueError(f"{name} must be a non-empty string or None, got {value!r}")
        if self.base_citation is not None and not self.base_citation.lstrip().startswith("@"):
            raise ValueError("base_citation must be a BibTeX entry starting with '@'")

    def _check_flops(self) -> None:
        numbers = (self.prefill_flops_unpruned, self.prefill_flops_pruned)
        if (numbers[0] is None) != (numbers[1] is None):
            raise ValueError("give both prefill_flops_unpruned and prefill_flops_pruned, or neither")
        if numbers[0] is None and self.prefill_flops_reduction is None:
            raise ValueError(
                "the card states the prefill-FLOPs reduction: give prefill_flops_unpruned and prefill_flops_pruned,"
                " or prefill_flops_reduction"
            )
        if numbers[0] is not None:
            for name in ("prefill_flops_unpruned", "prefill_flops_pruned"):
                value = getattr(self, name)
                if not _is_real(value) or value <= 0:
                    raise ValueError(f"{name} must be a positive finite number, got {value!r}")
            if self.prefill_flops_pruned >= self.prefill_flops_unpruned:
                raise ValueError(
                    f"prefill_flops_pruned ({self.prefill_flops_pruned}) must be below prefill_flops_unpruned"
                    f" ({self.prefill_flops_unpruned}) when {self.kept_description} is kept"
                )
        if self.prefill_flops_reduction is not None:
            r = self.prefill_flops_reduction
            if not _is_real(r) or not 0 <= r < 1:
                raise ValueError(f"prefill_flops_reduction must be a fraction in [0, 1), got {r!r}")
            if numbers[0] is not None:
                derived = 1 - self.prefill_flops_pruned / self.prefill_flops_unpruned
                if not math.isclose(r, derived, rel_tol=1e-3, abs_tol=1e-4):
                    raise ValueError(
                        f"prefill_flops_reduction ({r}) disagrees with the FLOPs numbers, which give {derived:.4f}"
                    )

    @property
    def kept_description(self) -> str:
        if self.method == "vflowopt":
            return "VFlowOpt's share of the tokens"
        if self.target_num is not None:
            return f"{self.target_num} of {self.image_tokens} tokens"
        return f"{self.retain_ratio:.1%} of each image's tokens"

    @property
    def flops_reduction(self) -> float:
        """Fraction of prefill FLOPs saved, from the numbers when given."""
        if self.prefill_flops_unpruned is not None:
            return 1 - self.prefill_flops_pruned / self.prefill_flops_unpruned
        return float(self.prefill_flops_reduction)

    @property
    def license_link_url(self) -> str | None:
        """``base_license_link`` as written into the card (relative links resolved against the base repo)."""
        link = self.base_license_link
        if link is None or self.base_model is None or re.match(r"^[a-z][a-z0-9+.-]*://", link, re.I):
            return link
        return f"{_HUB_URL}/{self.base_model}/blob/main/{link.removeprefix('./')}"


def build_card_data(
    info: VariantCardInfo, eval_results_path: str | Path | Sequence[str | Path] | None = None
) -> ModelCardData:
    """The card's front matter as :class:`~huggingface_hub.ModelCardData` (see :func:`render_variant_card`)."""
    eval_results = model_name = None
    if eval_results_path is not None:
        model_name, eval_results = load_eval_results(eval_results_path, default_model_name=_repo_name(info.repo_id))
    return ModelCardData(
        base_model=info.base_model,
        license=info.base_license,
        license_name=info.base_license_name,
        license_link=info.license_link_url,
        library_name=LIBRARY_NAME,
        pipeline_tag=PIPELINE_TAG,
        tags=[*BASE_TAGS, info.family, PIPELINE_TAG],
        eval_results=eval_results,
        model_name=model_name,
        # No base_model_relation: the Hub accepts only adapter/merge/quantized/finetune, and unchanged weights are
        # none of those, so a value here would misdescribe the repo or fail the Hub's YAML validation.
        flowcut={**info.settings, **({"base_revision": info.base_commit} if info.base_commit else {})},
    )


SEARCH_RECORD = {"trials", "samples", "data", "budget", "objective", "best_value", "sampler", "seed"}
"""What ``flowcut-hf search`` records about how it found a preset (the card's "How the settings were found")."""


def render_variant_card(
    info: VariantCardInfo, eval_results_path: str | Path | Sequence[str | Path] | None = None
) -> ModelCard:
    """Render the README.md model card of a FlowCut variant repo.

    Front matter: ``base_model``, the base's ``license`` (see :class:`VariantCardInfo` for the unknown / "other"
    rules), ``library_name: transformers``, ``pipeline_tag: image-text-to-text``, ``tags`` (flowcut,
    visual-token-pruning, the family, image-text-to-text), a ``flowcut:`` block holding ``info.settings``, and,
    when ``eval_results_path`` is given, a ``model-index`` built from that JSON file or files (schema:
    :mod:`flowcut_hf.hub_cards.eval_results`). There is deliberately no ``base_model_relation``.

    Body: what changed (N → K visual tokens per image, weights unchanged), a usage snippet with the real repo id
    and ``revision=`` pinning, what happens without ``trust_remote_code``, the settings table, the analytic
    prefill-FLOPs reduction, how FlowCut works, evaluation results if any, licence, and citations.

    Write it with ``card.save(folder / "README.md")``; ``ModelCard.load`` reads back the same metadata.

    Raises:
        ValueError: the eval-results file breaks its schema (the message names the field).
        RuntimeError: the rendered front matter does not read back as the metadata it was rendered from, which
            means the template broke the YAML block.
    """
    card_data = build_card_data(info, eval_results_path)
    template = files(__package__).joinpath("templates", TEMPLATE_NAME).read_text(encoding="utf-8")
    card = ModelCard.from_template(card_data, template_str=template, **_template_values(info, card_data))

    # from_template parses its own output, so a template edit that corrupts the YAML block (or ends it early) shows
    # up as a difference here instead of as a card the Hub rejects or misreads.
    if card.data.to_dict() != card_data.to_dict():
        raise RuntimeError("rendered model card front matter does not read back as the metadata it was built from")
    return card


def _template_values(info: VariantCardInfo, card_data: ModelCardData) -> dict[str, Any]:
    # Names differ from the front-matter keys on purpose: from_template also passes every front-matter key to the
    # template, and a clash would silently pick one of the two.
    reduction = info.flops_reduction
    flops: dict[str, Any] = {"percent": _percent(reduction), "note": info.prefill_flops_note}
    if reduction > 0:
        flops["factor"] = f"{1 / (1 - reduction):.2f}"
    if info.prefill_flops_unpruned is not None:
        scale, unit = _flops_unit(info.prefill_flops_unpruned)
        flops["unpruned"] = f"{info.prefill_flops_unpruned / scale:.2f} {unit}"
        flops["pruned"] = f"{info.prefill_flops_pruned / scale:.2f} {unit}"

    eval_rows = [
        {
            "dataset": _md_cell(r.dataset_name),
            # Only a namespaced id is known to be a Hub dataset; a bare name is often a local lmms-eval task.
            "dataset_url": f"{_HUB_URL}/datasets/{r.dataset_type}" if _is_namespaced_repo_id(r.dataset_type) else None,
            "split": _md_cell(r.dataset_split or ""),
            "metric": _md_cell(r.metric_name or r.metric_type),
            "value": _md_cell(str(r.metric_value)),
            "source": _md_cell(r.source_name or r.source_url or ""),
            "source_url": r.source_url,
        }
        for r in card_data.eval_results or ()
    ]

    base_link = (
        f"[`{info.base_model}`]({_HUB_URL}/{info.base_model})" if info.base_model
        else "the base model (its Hub id was not given when this variant was exported)"
    )
    family = family_named(info.family)
    entry = next(entry for entry in REGISTRY if entry.name == info.family)
    overrides = dict(entry.vllm_requires)
    vllm_command = f"vllm serve {info.repo_id}" + (f" --hf-overrides '{json.dumps(overrides)}'" if overrides else "")
    values = {
        "vllm_served": info.method in entry.vllm_methods,
        "vllm_command": vllm_command,
        "vllm_overrides": overrides,
        "vllm_overrides_literal": repr(overrides),
        "vllm_overrides_kwargs": ", ".join(f"{name}={value!r}" for name, value in overrides.items()),
        "kept_per_image": f"{info.target_num} visual tokens per image" if info.target_num is not None else (
            f"{info.retain_ratio:.1%} of each image's visual tokens" if info.retain_ratio is not None else None
        ),
        "method_name": "VFlowOpt" if info.method == "vflowopt" else "FlowCut",
        "variant_title": _repo_name(info.repo_id),
        "variant_repo_id": info.repo_id,
        "base_link": base_link,
        "base_link_capitalized": base_link[:1].upper() + base_link[1:],
        "family_name": family.card_name,
        "kept_tokens": info.target_num if info.target_num is not None else (
            f"{info.retain_ratio:.1%} of them" if info.retain_ratio is not None else None
        ),
        "half_kept_tokens": info.target_num // 2 if info.target_num is not None else None,
        "retain_percent": _percent(info.retain_ratio) if info.retain_ratio is not None else None,
        "vision_percent": _percent(min(1.0, 2 * info.retain_ratio)) if info.retain_ratio is not None else None,
        "llm_prune_layer": info.settings.get("flowcut_llm_prune_layer"),
        "unpruned_tokens": info.image_tokens,
        "token_cut_percent": _percent(
            1 - (info.target_num / info.image_tokens if info.target_num is not None else (info.retain_ratio or info.budget or 1.0))
        ),
        "method": info.method,
        "budget_percent": _percent(info.budget) if info.budget is not None else None,
        # A hand-written preset file may record part of a search; the card describes only a complete record.
        "search": dict(info.search) if info.search and SEARCH_RECORD <= set(info.search) else None,
        "preset_note": info.preset_note,
        "base_commit": info.base_commit,
        "base_revision_requested": info.base_revision_requested,
        "repo_id_literal": json.dumps(info.repo_id),
        "revision_literal": json.dumps(info.revision or "main"),
        "revision_pinned": info.revision is not None,
        "settings_rows": [(_md_cell(k), _md_cell(json.dumps(v, ensure_ascii=False))) for k, v in info.settings.items()],
        "flops": flops,
        "eval_rows": eval_rows,
        "base_license_id": info.base_license,
        "base_license_name_text": info.base_license_name,
        "base_license_url": info.license_link_url,
        "flowcut_bibtex": FLOWCUT_BIBTEX,
        "base_bibtex": info.base_citation.strip() if info.base_citation else None,
    }
    # The family's own wording, rendered with the same values.
    for name, fragment in family.card_text().items():
        values[f"family_{name}"] = jinja2.Template(fragment).render(**values).strip("\n")
    return values


def _normalise_settings(settings: Any, target_num: int | None) -> dict[str, Any]:
    if not isinstance(settings, Mapping):
        raise ValueError(f"settings must be a mapping of config field -> value, got {type(settings).__name__}")
    for key in settings:
        if not isinstance(key, str) or not key:
            raise ValueError(f"settings keys must be non-empty strings, got {key!r}")
    try:
        block = json.loads(json.dumps(dict(settings), allow_nan=False))
    except (TypeError, ValueError) as err:
        bad = next((k for k, v in settings.items() if not _json_ok(v)), None)
        raise ValueError(f"settings[{bad!r}] is not a JSON value (as config.json needs): {err}") from None
    if target_num is not None and block.setdefault(_TARGET_FIELD, target_num) != target_num:
        raise ValueError(f"settings[{_TARGET_FIELD!r}] is {block[_TARGET_FIELD]!r} but target_num is {target_num}")
    return block


def _json_ok(value: Any) -> bool:
    try:
        json.dumps(value, allow_nan=False)
    except (TypeError, ValueError):
        return False
    return True


def _check_repo_id(name: str, value: Any) -> None:
    if not isinstance(value, str) or value.count("/") != 1:
        raise ValueError(f"{name} must be a Hub repo id 'owner/name', got {value!r}")
    try:
        validate_repo_id(value)
    except ValueError as err:
        raise ValueError(f"{name} is not a valid Hub repo id: {err}") from None


def _is_namespaced_repo_id(value: str) -> bool:
    try:
        validate_repo_id(value)
    except ValueError:
        return False
    return value.count("/") == 1


def _is_real(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def _repo_name(repo_id: str) -> str:
    return repo_id.rsplit("/", 1)[-1]


def _percent(fraction: float) -> str:
    return f"{fraction * 100:.1f}%"


def _flops_unit(value: float) -> tuple[float, str]:
    for scale, unit in ((1e15, "PFLOPs"), (1e12, "TFLOPs"), (1e9, "GFLOPs"), (1e6, "MFLOPs")):
        if value >= scale:
            return scale, unit
    return 1.0, "FLOPs"


def _md_cell(text: str) -> str:
    # A bare '|' ends a Markdown table cell and a newline ends the row.
    return " ".join(text.split()).replace("|", "\\|")
