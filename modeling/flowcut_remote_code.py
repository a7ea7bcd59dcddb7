"""What a saved FlowCut folder needs to load as Hub remote code: its ``auto_map`` and exactly the files it imports.

transformers copies a remote-code module and, recursively, the sibling modules it imports with
``from .module import name``. A folder therefore needs the entry files of its family (modeling, plus a processor
if the family has one) and their relative-import closure; nothing of the other families.
"""

from __future__ import annotations

import re
import shutil
from collections.abc import Iterable
from pathlib import Path

from transformers.conversion_mapping import get_checkpoint_conversion_mapping, register_checkpoint_conversion_mapping

MODELING_DIR = Path(__file__).resolve().parent
_RELATIVE_IMPORT = re.compile(r"^\s*from\s+\.(\w+)\s+import\s", re.MULTILINE)


def remote_code_files(entry_files: Iterable[str]) -> list[Path]:
    """The files of this folder that ``entry_files`` (names such as ``modeling_flowcut_llava.py``) need, themselves
    included, following their ``from .module import`` lines recursively. Sorted by name."""
    pending = [MODELING_DIR / name for name in entry_files]
    needed: dict[str, Path] = {}
    while pending:
        path = pending.pop()
        if path.name in needed:
            continue
        if not path.is_file():
            raise FileNotFoundError(f"remote-code file {path.name} is not in {MODELING_DIR}")
        needed[path.name] = path
        pending.extend(MODELING_DIR / f"{module}.py" for module in _RELATIVE_IMPORT.findall(path.read_text()))
    return [needed[name] for name in sorted(needed)]


def copy_remote_code_files(save_directory, entry_files: Iterable[str]) -> list[str]:
    """Copies the files ``entry_files`` need, byte for byte, into ``save_directory``; returns their names."""
    names = []
    for source in remote_code_files(entry_files):
        destination = Path(save_directory) / source.name
        if destination.resolve() != source:
            shutil.copyfile(source, destination)
        names.append(source.name)
    return names


def register_stock_checkpoint_conversion(class_to_stock_key: dict[str, str]) -> None:
    """Registers the stock checkpoint-key conversion under the names of FlowCut's classes.

    transformers 5 skips its built-in key conversion for custom-code classes unless they are registered by name;
    without this, llava-hf checkpoints load with a silently random language model.
    """
    for class_name, stock_key in class_to_stock_key.items():
        mapping = get_checkpoint_conversion_mapping(stock_key)
        if mapping is not None:
            register_checkpoint_conversion_mapping(class_name, mapping, overwrite=True)


class RemoteCodeSavingMixin:
    """``save_pretrained`` that also writes ``auto_map`` and the remote-code files the family needs.

    Subclasses set :attr:`flowcut_auto_map` and :attr:`flowcut_remote_code_entry_files`.
    """

    flowcut_auto_map: dict[str, str] = {}
    flowcut_remote_code_entry_files: tuple[str, ...] = ()

    def save_pretrained(self, save_directory, *args, **kwargs):
        self.config.auto_map = dict(self.flowcut_auto_map)
        super().save_pretrained(save_directory, *args, **kwargs)
        copy_remote_code_files(save_directory, self.flowcut_remote_code_entry_files)


__all__ = [
    "RemoteCodeSavingMixin",
    "copy_remote_code_files",
    "register_stock_checkpoint_conversion",
    "remote_code_files",
]
