"""What ``flowcut-hf export`` takes: the options and the parsing of its values. Standard library only, so that the
command's parent process can check its arguments without importing torch."""

from __future__ import annotations

import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

DEFAULT_NAME_PATTERN = "{base}-flowcut{n}"
VFLOWOPT_NAME_PATTERN = "{base}-vflowopt{n}"


@dataclass
class ExportOptions:
    """Everything ``flowcut-hf export`` takes, in one place."""

    target_nums: Sequence[int]
    out: Path
    retain_ratios: Sequence[float] = ()
    vflowopt_presets: Sequence[str] = ()
    """VFlowOpt variants (families that run VFlowOpt): released preset names or preset JSON files."""
    push: str | None = None
    private: bool = False
    revision: str | None = None
    overwrite: bool = False
    dry_run: bool = False
    commit_message: str | None = None
    create_pr: bool = False
    allow_pickle: bool = False
    vision_tower: Path | None = None
    eval_results: Path | Sequence[Path] | None = None
    """Evaluation-results JSON files (lmms-eval's, or the simple schema) merged into the card's model-index."""
    name_pattern: str = DEFAULT_NAME_PATTERN
    base_model: str | None = None
    verify: bool = True
    max_memory: int | None = None
    """Bytes of memory the verification may use; a share of the free memory by default (:func:`flowcut_hf.export.checks.memory_plan`)."""


_SIZE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(B|KB|MB|GB|TB|KIB|MIB|GIB|TIB)?\s*$", re.IGNORECASE)
_UNITS = {"B": 1, "KB": 10**3, "MB": 10**6, "GB": 10**9, "TB": 10**12, "KIB": 2**10, "MIB": 2**20, "GIB": 2**30, "TIB": 2**40}


def parse_memory_size(text: str) -> int:
    """``"8GB"``, ``"500MiB"``, ``"2.5GB"`` or a byte count, in bytes."""
    match = _SIZE.match(text)
    if not match:
        raise ValueError(f"--max-memory takes a size such as 8GB, 500MiB or 2.5GB, got {text!r}")
    size = int(float(match.group(1)) * _UNITS[(match.group(2) or "B").upper()])
    if size <= 0:
        raise ValueError(f"--max-memory must be more than 0, got {text!r}")
    return size
