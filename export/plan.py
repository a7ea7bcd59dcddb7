"""Planning an export: one variant per amount, with its folder and its Hub repo id, every name checked before any
stage runs (a real run and a dry run plan the same way)."""

from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from ..amounts import RetainedAmount, validate_targets
from .options import DEFAULT_NAME_PATTERN, VFLOWOPT_NAME_PATTERN, ExportOptions
from .resolve import ResolvedSource, looks_like_repo_id


@dataclass
class VariantPlan:
    amount: RetainedAmount
    name: str
    folder: Path
    repo_id: str | None

    @property
    def target_num(self) -> int | None:
        return self.amount.target_num


@dataclass
class VariantResult:
    plan: VariantPlan
    files: list[str] = field(default_factory=list)
    token_schedule: list[int] | list[list[int]] | None = None
    verification: dict[str, Any] | None = None
    """What verification measured on its check image (see :func:`verification_summary`); None if it did not run."""
    pushed_commit: str | None = None
    pushed_url: str | None = None
    reused: bool = False


def plan_variants(resolved: ResolvedSource, options: ExportOptions) -> list[VariantPlan]:
    amounts = validate_targets(
        resolved.family, resolved.hf_config, list(options.target_nums), list(options.retain_ratios),
        list(options.vflowopt_presets),
    )
    pattern = options.name_pattern
    if options.vflowopt_presets and pattern == DEFAULT_NAME_PATTERN:
        pattern = VFLOWOPT_NAME_PATTERN
    protected = [p.resolve() for p in (resolved.local_dir, options.vision_tower) if p is not None]
    plans = []
    for amount in amounts:
        name = fill_pattern(pattern, "--name-pattern", base=resolved.base_name, n=amount.label)
        if name in ("", ".", "..") or Path(name).name != name or name.startswith("."):
            raise ValueError(f"--name-pattern gives {name!r}, which is not a plain folder name.")
        folder = (Path(options.out) / name).resolve()
        for read_from in protected:
            if folder == read_from or read_from.is_relative_to(folder) or folder.is_relative_to(read_from):
                raise ValueError(
                    f"The variant folder {folder} overlaps {read_from}, which the export reads from; choose another "
                    "--out or --name-pattern."
                )
        repo_id = push_repo_id(options.push, resolved.base_name, amount.label, len(amounts), pattern)
        if repo_id is not None and resolved.repo_id is not None and repo_id.lower() == resolved.repo_id.lower():
            raise ValueError(f"Refusing to push into the source repo {repo_id}; choose another --push repo id.")
        plans.append(VariantPlan(amount, name, Path(options.out) / name, repo_id))
    if len({plan.name for plan in plans}) != len(plans):
        raise ValueError(f"--name-pattern {options.name_pattern!r} gives the same folder to several variants; use {{n}}.")
    return plans


def push_repo_id(push: str | None, base: str, target: int | str, count: int, pattern: str) -> str | None:
    """``--push`` is a repo id (one variant), a namespace (``org``: one repo per variant, named by the pattern), or
    a repo id containing ``{n}``."""
    if push is None:
        return None
    if "/" not in push:
        return check_push_repo_id(f"{push}/{fill_pattern(pattern, '--name-pattern', base=base, n=target)}")
    if "{" in push:
        return check_push_repo_id(fill_pattern(push, "--push", n=target, base=base))
    if count > 1:
        raise ValueError(
            f"--push {push} names one repo but {count} variants are exported; give a namespace (--push "
            f"{push.split('/')[0]}) or a pattern with {{n}} (--push {push}-{{n}})."
        )
    if not looks_like_repo_id(push):
        raise ValueError(f"--push {push!r} is not a repo id of the form owner/name.")
    return check_push_repo_id(push)


def fill_pattern(pattern: str, flag: str, **values: Any) -> str:
    """``pattern`` with its placeholders filled; a ValueError naming ``flag`` and the valid placeholders otherwise."""
    valid = " and ".join(f"{{{name}}}" for name in values)
    try:
        return pattern.format(**values)
    except KeyError as error:
        raise ValueError(f"{flag} {pattern!r} has the unknown placeholder {{{error.args[0]}}}; the valid ones are {valid}.") from None
    except (IndexError, ValueError) as error:
        raise ValueError(f"{flag} {pattern!r} is not a valid pattern ({error}); use {valid}, and {{{{ }}}} for a literal brace.") from None


def check_push_repo_id(repo_id: str) -> str:
    from huggingface_hub.utils import HFValidationError, validate_repo_id

    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise ValueError(f"--push gives {repo_id!r}, which is not a valid Hub repo id: {error}") from None
    if repo_id.count("/") != 1:
        raise ValueError(f"--push gives {repo_id!r}, which is not a Hub repo id of the form owner/name.")
    return repo_id


__all__ = ["VariantPlan", "VariantResult", "check_push_repo_id", "fill_pattern", "plan_variants", "push_repo_id"]
