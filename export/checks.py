"""Running a verification check: the clean subprocess that loads a variant as remote code.

This module imports only the standard library. ``flowcut-hf export`` runs the checks from a parent process that never
imports torch, so that while a check holds the model the exporter adds no second copy of the libraries' memory
(see :func:`flowcut_hf.export_cli.run`). What a check must show is judged by :mod:`flowcut_hf.export.pipeline`.
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

logger = logging.getLogger(__name__)


class VerificationError(RuntimeError):
    """An exported variant failed its checks; nothing of it is kept or pushed."""


DEFAULT_MEMORY_SHARE = 0.5
"""The share of the free memory verification may use when ``--max-memory`` is not given."""

ROOM_FOR_THE_FORWARD_PASS = 1.25
"""A variant loads without accelerate's placement when this many times its weights fit under the cap."""


def free_memory_bytes() -> int | None:
    """The memory the system can give without swapping (``MemAvailable``), or None where it cannot be read."""
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def memory_plan(folder: Path, max_memory: int | None, offload_folder: Path) -> dict[str, Any]:
    """The memory budget of a check run: ``cap`` bytes (``max_memory``, or half the free memory; None where neither
    is known), the variant's ``weights`` bytes and the ``offload_folder``. The check process decides with it how to
    load (see ``LOAD_ONE_COPY`` in the pipeline): plainly when the weights fit the cap with room for the forward pass
    and there is no GPU; otherwise with accelerate's ``max_memory`` (a GPU takes what it can first) and what does not
    fit on disk."""
    weights = sum(path.stat().st_size for path in Path(folder).glob("*.safetensors"))
    cap = max_memory if max_memory is not None else int(DEFAULT_MEMORY_SHARE * (free_memory_bytes() or 0)) or None
    return {"cap": cap, "weights": weights, "offload_folder": str(offload_folder), "room": ROOM_FOR_THE_FORWARD_PASS}


def run_python(code: str, args: Sequence[str], workdir: Path, *, clean: bool, env: dict[str, str] | None = None) -> dict:
    """Runs ``code`` in a fresh interpreter in ``workdir`` and returns the JSON object its last output line holds.
    ``clean`` gives it its own remote-code module cache. Raises VerificationError when it fails."""
    env = {**{k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}, **(env or {})}
    if clean:
        env["HF_MODULES_CACHE"] = str(Path(workdir) / "modules")
    env["HF_HUB_OFFLINE"] = "1"  # everything the check needs is on disk; the check must not hide a missing file
    # -P keeps the working folder off sys.path; the clean run also cannot import flowcut_hf (see its import hook).
    result = subprocess.run([sys.executable, "-P", "-c", code, *args], cwd=workdir, env=env, capture_output=True, text=True)
    lines = result.stdout.strip().splitlines()
    if result.returncode != 0 or not lines:
        logger.error("verification subprocess output:\n%s", result.stderr)
        last_line = next((line for line in reversed(result.stderr.splitlines()) if line.strip()), "no output")
        raise VerificationError(f"the verification subprocess failed: {last_line}")
    return json.loads(lines[-1])


@dataclass
class CheckJob:
    """One prepared check: the script and its arguments, ready to run in ``check_dir`` (which holds the check
    image, and receives the logits files and the offload folder)."""

    name: str
    folder: str
    check_dir: str
    script: str
    args: list[str]

    def to_json(self) -> dict[str, Any]:
        return asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> CheckJob:
        return cls(**data)


def run_check(job: CheckJob, max_memory: int | None) -> dict[str, Any]:
    """Runs ``job`` in a clean subprocess under the memory budget of :func:`memory_plan` and returns its report."""
    check_dir = Path(job.check_dir)
    plan = memory_plan(Path(job.folder), max_memory, check_dir / "offload")
    return run_python(job.script, job.args, check_dir, clean=True, env={"FLOWCUT_VERIFY_MEMORY": json.dumps(plan)})
