"""Weight files, as the exporter and the original-layout converters handle them: finding and checking a
checkpoint's files (safetensors framing, indexes, pickles), listing and streaming tensors without loading a shard, and
writing safetensors shards one tensor at a time. Nothing here knows a model family."""

from __future__ import annotations

import json
import math
import re
import shutil
import uuid
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open

SAFETENSORS_DTYPES = {
    "F64": torch.float64,
    "F32": torch.float32,
    "F16": torch.float16,
    "BF16": torch.bfloat16,
    "I64": torch.int64,
    "I32": torch.int32,
    "I16": torch.int16,
    "I8": torch.int8,
    "U8": torch.uint8,
    "BOOL": torch.bool,
}


def read_json_object(path: Path) -> dict[str, Any]:
    try:
        with open(path, encoding="utf-8") as handle:
            data = json.load(handle)
    except json.JSONDecodeError as err:
        raise ValueError(f"{path} is not valid JSON: {err}") from err
    if not isinstance(data, dict):
        raise ValueError(f"{path} does not hold a JSON object")
    return data


def parse_size(size: int | str) -> int:
    if isinstance(size, int):
        if size <= 0:
            raise ValueError(f"max_shard_size must be positive, got {size}")
        return size
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?I?B?)\s*", size.upper())
    if not match:
        raise ValueError(f"cannot parse max_shard_size {size!r}; use bytes or e.g. '5GB', '500MB'")
    number, unit = float(match.group(1)), match.group(2).rstrip("B") or ""
    scale = {"": 1, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "KI": 2**10, "MI": 2**20, "GI": 2**30, "TI": 2**40}
    return max(1, int(number * scale[unit]))


def resolve_float_dtype(dtype: torch.dtype | str | None) -> torch.dtype | None:
    if dtype is None or isinstance(dtype, torch.dtype):
        return dtype
    resolved = getattr(torch, str(dtype).replace("torch.", ""), None)
    if not isinstance(resolved, torch.dtype) or not resolved.is_floating_point:
        raise ValueError(f"unknown floating dtype {dtype!r}")
    return resolved


def weight_files(folder: Path, *, allow_pickle: bool, what: str) -> tuple[list[Path], bool]:
    """The weight files of ``folder`` in load order, and whether they are pickles. Refuses pickles unless allowed."""
    st_index = folder / "model.safetensors.index.json"
    if st_index.is_file():
        return files_from_index(folder, st_index), False
    safetensors_files = sorted(folder.glob("model*.safetensors")) or sorted(folder.glob("*.safetensors"))
    if safetensors_files:
        return safetensors_files, False

    bin_index = folder / "pytorch_model.bin.index.json"
    # Only pytorch_model*.bin: LLaVA folders also hold training_args.bin / mm_projector.bin, which are not the model.
    bin_files = (
        files_from_index(folder, bin_index) if bin_index.is_file() else sorted(folder.glob("pytorch_model*.bin"))
    )
    if bin_files:
        if not allow_pickle:
            raise pickle_refusal(f"the {what} in {folder}", bin_files[0].name)
        return bin_files, True
    raise FileNotFoundError(f"no {what} weights (*.safetensors or pytorch_model*.bin) found in {folder}")


def check_weight_files(files: Sequence[Path]) -> None:
    """Raises a ValueError naming the first damaged file: a safetensors file whose header does not parse or whose
    size is not what its header describes (truncated, or cut short by an interrupted download). Reads headers only."""
    for path in files:
        if path.suffix == ".safetensors":
            problem = safetensors_problem(path)
            if problem:
                raise ValueError(f"{path} is damaged ({problem}); download or copy it again.")


def safetensors_problem(path: Path) -> str | None:
    """What is wrong with a safetensors file's framing, or None: the 8-byte header length, the JSON header, and the
    data section's size against the largest offset the header names."""
    size = path.stat().st_size
    try:
        with open(path, "rb") as handle:
            prefix = handle.read(8)
            if len(prefix) < 8:
                return f"{size} bytes, shorter than a safetensors header"
            header_length = int.from_bytes(prefix, "little")
            if header_length > size - 8:
                return f"the header claims {header_length} bytes, the file has {size}"
            header = json.loads(handle.read(header_length))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        return f"its header is not valid JSON: {error}"
    if not isinstance(header, dict):
        return "its header is not a JSON object"
    ends = [entry.get("data_offsets", [0, 0])[1] for name, entry in header.items() if name != "__metadata__" and isinstance(entry, dict)]
    expected = 8 + header_length + max(ends, default=0)
    if size != expected:
        return f"{size} bytes where its header describes {expected}"
    return None


def pickle_refusal(where: str, first_file: str) -> ValueError:
    """The error for pickle weights without the flag that accepts them (``where``: "the checkpoint in ...")."""
    return ValueError(
        f"{where} is stored as PyTorch pickle files ({first_file}, ...); unpickling untrusted files can run arbitrary "
        "code. Pass allow_pickle=True (CLI: --allow-pickle) to convert them anyway; they are then read with "
        "torch.load(weights_only=True)"
    )


def files_from_index(folder: Path, index_path: Path) -> list[Path]:
    try:
        weight_map = read_json_object(index_path).get("weight_map")
    except (ValueError, UnicodeDecodeError) as error:
        raise ValueError(f"{index_path} is damaged ({error}); download or copy it again.") from None
    if not isinstance(weight_map, dict) or not weight_map:
        raise ValueError(f"{index_path} has no weight_map")
    names = sorted(set(weight_map.values()))  # file order, not key order, so output shards follow the source
    missing = [name for name in names if not (folder / name).is_file()]
    if missing:
        raise FileNotFoundError(f"{index_path} lists shards that are not in {folder}: {missing[:5]}")
    return [folder / name for name in names]


def load_pickle_state(path: Path) -> dict[str, torch.Tensor]:
    try:
        # mmap keeps a multi-GB .bin out of RAM; tensors are paged in only as they are written out.
        state = torch.load(path, map_location="cpu", weights_only=True, mmap=True)
    except RuntimeError:
        state = torch.load(path, map_location="cpu", weights_only=True)  # legacy (non-zip) format cannot mmap
    if isinstance(state, dict) and "state_dict" in state and isinstance(state["state_dict"], dict):
        state = state["state_dict"]
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise ValueError(f"{path} is not a flat state dict of tensors")
    return state


def list_tensors(path: Path, pickled: bool) -> dict[str, tuple[tuple[int, ...], torch.dtype | None]]:
    """Names, shapes and dtypes without reading the tensor data (safetensors) or only through mmap (pickles)."""
    if pickled:
        state = load_pickle_state(path)
        listing = {key: (tuple(t.shape), t.dtype) for key, t in state.items()}
        del state
        return listing
    listing = {}
    with safe_open(str(path), framework="pt") as handle:
        for key in handle.keys():  # noqa: SIM118 - safe_open handles are not iterable
            view = handle.get_slice(key)
            listing[key] = (tuple(view.get_shape()), SAFETENSORS_DTYPES.get(view.get_dtype()))
    return listing


def iter_tensors(path: Path, pickled: bool, keys: Sequence[str]) -> Iterator[tuple[str, torch.Tensor]]:
    if pickled:
        state = load_pickle_state(path)
        try:
            for key in keys:
                # clone: mmap-backed tensors may share storage, which safetensors refuses to save.
                yield key, state[key].clone()
        finally:
            del state
        return
    with safe_open(str(path), framework="pt") as handle:
        for key in keys:
            yield key, handle.get_tensor(key)


def resize_rows(tensor: torch.Tensor, rows: int) -> torch.Tensor:
    """Grows an embedding / lm_head matrix to ``rows``; new rows are the mean of the old ones."""
    if tensor.shape[0] == rows:
        return tensor
    # Mean rows keep the new tokens' logits and embeddings in-distribution (Hewitt, "Initializing new word
    # embeddings"); computed in float32 so a float16 sum over 32k rows does not overflow.
    mean = tensor.float().mean(dim=0, keepdim=True).to(tensor.dtype)
    return torch.cat([tensor, mean.expand(rows - tensor.shape[0], -1)], dim=0)


def round_up(value: int, multiple: int) -> int:
    return -(-value // multiple) * multiple


SAFETENSORS_NAMES = {dtype: name for name, dtype in SAFETENSORS_DTYPES.items()}


@dataclass(frozen=True)
class PlannedTensor:
    name: str
    shape: tuple[int, ...]
    dtype: torch.dtype

    @property
    def nbytes(self) -> int:
        return math.prod(self.shape) * torch.empty((), dtype=self.dtype).element_size()


class ShardWriter:
    """Writes planned tensors into safetensors shards of at most ``max_bytes`` as they arrive, one at a time.

    Every tensor's name, shape and dtype is known before its data is read, so each shard's header (with the byte
    range of every tensor) is written first and a tensor goes to its own range the moment it arrives: the converter
    holds one tensor, not a shard, whatever ``max_bytes`` is.
    """

    def __init__(self, folder: Path, max_bytes: int, layout: Sequence[PlannedTensor]) -> None:
        self.folder = folder
        self.total_bytes = sum(tensor.nbytes for tensor in layout)
        groups: list[list[PlannedTensor]] = [[]]
        for tensor in layout:
            if groups[-1] and sum(t.nbytes for t in groups[-1]) + tensor.nbytes > max_bytes:
                groups.append([])
            groups[-1].append(tensor)
        self.shards: list[tuple[Path, list[str]]] = []
        self.place: dict[str, tuple[Path, int, PlannedTensor]] = {}
        for number, group in enumerate(groups):
            path = folder / f"shard-{number:05d}.partial"
            header: dict[str, Any] = {"__metadata__": {"format": "pt"}}  # transformers refuses files without it
            offset = 0
            for tensor in group:
                header[tensor.name] = {
                    "dtype": SAFETENSORS_NAMES[tensor.dtype], "shape": list(tensor.shape),
                    "data_offsets": [offset, offset + tensor.nbytes],
                }
                offset += tensor.nbytes
            encoded = json.dumps(header, separators=(",", ":")).encode()
            encoded += b" " * (-len(encoded) % 8)
            with open(path, "wb") as handle:
                handle.write(len(encoded).to_bytes(8, "little") + encoded)
                handle.truncate(8 + len(encoded) + offset)
            start = 8 + len(encoded)
            for tensor in group:
                self.place[tensor.name] = (path, start + header[tensor.name]["data_offsets"][0], tensor)
            self.shards.append((path, [tensor.name for tensor in group]))
        self.written: set[str] = set()

    def add(self, name: str, tensor: torch.Tensor) -> None:
        path, offset, planned = self.place[name]
        if tuple(tensor.shape) != planned.shape or tensor.dtype != planned.dtype:
            raise RuntimeError(f"{name}: planned {planned.shape} {planned.dtype}, got {tuple(tensor.shape)} {tensor.dtype}")
        data = tensor.contiguous().reshape(-1).view(torch.uint8).numpy()
        with open(path, "r+b") as handle:
            handle.seek(offset)
            handle.write(memoryview(data))
        self.written.add(name)

    def finish(self) -> tuple[str, ...]:
        """Gives the shards their final names and writes the index."""
        missing = sorted(set(self.place) - self.written)
        if missing:
            raise RuntimeError(f"{len(missing)} planned tensors were never written, e.g. {missing[:3]}")
        count = len(self.shards)
        names = (
            ["model.safetensors"]
            if count == 1
            else [f"model-{i + 1:05d}-of-{count:05d}.safetensors" for i in range(count)]
        )
        weight_map: dict[str, str] = {}
        for (path, keys), name in zip(self.shards, names, strict=True):
            path.rename(self.folder / name)
            weight_map.update(dict.fromkeys(keys, name))
        if count > 1:
            index = {"metadata": {"total_size": self.total_bytes}, "weight_map": dict(sorted(weight_map.items()))}
            (self.folder / "model.safetensors.index.json").write_text(json.dumps(index, indent=2) + "\n")
        return tuple(names)


def publish_folder(tmp_dir: Path, out_dir: Path, overwrite: bool) -> None:
    """Moves the finished folder into place; an existing out_dir is replaced only once the new one is complete."""
    if not out_dir.exists():
        tmp_dir.rename(out_dir)
        return
    if not overwrite:
        raise FileExistsError(
            f"{out_dir} appeared during the conversion; pass overwrite=True (CLI: --overwrite) to replace it"
        )
    backup = out_dir.with_name(f".{out_dir.name}.old-{uuid.uuid4().hex[:8]}")
    out_dir.rename(backup)
    try:
        tmp_dir.rename(out_dir)
    except BaseException:
        backup.rename(out_dir)
        raise
    shutil.rmtree(backup, ignore_errors=True)


__all__ = [
    "SAFETENSORS_DTYPES", "PlannedTensor", "ShardWriter", "check_weight_files", "files_from_index", "iter_tensors",
    "list_tensors", "load_pickle_state", "parse_size", "pickle_refusal", "publish_folder", "read_json_object",
    "resize_rows", "resolve_float_dtype", "round_up", "safetensors_problem", "weight_files",
]
