"""Stage 2 of the exporter: a source in a family's original (non-transformers) layout becomes an HF-format folder in
the export's work folder; HF-format sources pass through. The family's adapter does the conversion
(:meth:`flowcut_hf.family.FlowCutFamily.convert_original`), streaming one tensor at a time.

Also a command of its own, for a converted folder without an export:
``python -m flowcut_hf.export.convert SOURCE OUT [--vision-tower DIR] [--allow-pickle] [--overwrite] ...``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import logging
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .resolve import ResolvedSource, family_of_original_checkpoint
from .weights import read_json_object


def convert(resolved: ResolvedSource, work_dir: Path, *, vision_tower: Path | None, allow_pickle: bool) -> ResolvedSource:
    """The HF-layout source: ``resolved`` itself, or its conversion into ``work_dir / "converted"``."""
    if resolved.kind == "hf":
        return resolved
    converted_dir = work_dir / "converted"
    resolved.family.convert_original(resolved.local_dir, converted_dir, vision_tower=vision_tower, allow_pickle=allow_pickle)
    config = json.loads((converted_dir / "config.json").read_text())
    return replace(resolved, local_dir=converted_dir, kind="hf", config=config, converted_from_original=True)


def main(argv: Sequence[str] | None = None) -> int:
    """``python -m flowcut_hf.export.convert SOURCE OUT ...``: converts one original-layout checkpoint."""
    parser = argparse.ArgumentParser(
        prog="python -m flowcut_hf.export.convert",
        description="Convert a checkpoint in a family's original (non-transformers) layout into an HF-layout folder.",
    )
    parser.add_argument("source_dir", type=Path, help="the original-layout checkpoint folder")
    parser.add_argument("out_dir", type=Path, help="the HF-layout folder to write")
    parser.add_argument("--vision-tower", type=Path, default=None, help="local vision-tower folder (default: fetch the one the config names)")
    parser.add_argument("--allow-pickle", action="store_true", help="accept PyTorch .bin pickle weights")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing output folder")
    parser.add_argument("--max-shard-size", default="5GB", help="largest output shard (default 5GB)")
    parser.add_argument("--dtype", default=None, help="output dtype, e.g. float16 (default: keep)")
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    try:
        if not (args.source_dir / "config.json").is_file():
            raise FileNotFoundError(f"{args.source_dir} has no config.json; is it a checkpoint folder?")
        config = read_json_object(args.source_dir / "config.json")
        family = family_of_original_checkpoint(config, str(args.source_dir))
        if family is None:
            raise ValueError(f"{args.source_dir} is not in an original layout any family converts")
        report = family.convert_original(
            args.source_dir, args.out_dir, vision_tower=args.vision_tower, allow_pickle=args.allow_pickle,
            overwrite=args.overwrite, max_shard_size=args.max_shard_size, dtype=args.dtype,
        )
    except (FileNotFoundError, FileExistsError, ValueError) as err:
        parser.exit(2, f"error: {err}\n")
    print(json.dumps(dataclasses.asdict(report), indent=2, default=str))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
