"""``flowcut-hf measure -- COMMAND ...``: the peak memory of a command and all the processes it starts, and its wall
time.

The exporter runs its checks in subprocesses, so the peak of one process says too little: this samples the memory of
the command's whole process tree every ``--interval`` seconds from ``/proc`` (Linux) and reports the largest sum. Each
process counts its proportional set size (PSS): a page that several processes share (the torch and transformers
libraries both processes load, a memory-mapped checkpoint) is split between them, so the sum is what the machine
needed, counted once. The resident sizes (RSS, shared pages counted in every process) are reported too.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from pathlib import Path

from .cli import plain_help

PROC = Path("/proc")


@dataclass(frozen=True)
class Measurement:
    command: list[str]
    returncode: int
    wall_seconds: float
    peak_bytes: int
    """The largest sum, over one sample, of the PSS of the command's process and all its descendants."""
    peak_rss_bytes: int
    """The same for their RSS (shared pages counted once per process that maps them): an upper bound."""
    peak_processes: int
    """How many processes were alive at that sample."""


def process_tree(root: int) -> list[int]:
    """``root`` and every process below it that is alive now."""
    children: dict[int, list[int]] = {}
    for entry in PROC.iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        children.setdefault(int(fields[1]), []).append(int(entry.name))
    tree, pending = [], [root]
    while pending:
        pid = pending.pop()
        tree.append(pid)
        pending.extend(children.get(pid, []))
    return tree


def memory_bytes(pid: int) -> tuple[int, int]:
    """``(pss, rss)`` of a process in bytes, ``(0, 0)`` if it has gone."""
    pss = rss = 0
    try:
        for line in (PROC / str(pid) / "smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                pss = int(line.split()[1]) * 1024
            elif line.startswith("Rss:"):
                rss = int(line.split()[1]) * 1024
    except OSError:
        pass
    return pss, rss


def measure(command: Sequence[str], interval: float = 0.05) -> Measurement:
    """Runs ``command`` and samples its process tree's memory until it exits."""
    if not PROC.is_dir():
        raise ValueError("measuring memory reads /proc, which this system does not have (Linux only)")
    start = time.perf_counter()
    process = subprocess.Popen(list(command))
    peak = peak_rss = peak_processes = 0
    try:
        while process.poll() is None:
            tree = process_tree(process.pid)
            samples = [memory_bytes(pid) for pid in tree]
            total = sum(pss for pss, _ in samples)
            if total > peak:
                peak, peak_processes = total, len(tree)
            peak_rss = max(peak_rss, sum(rss for _, rss in samples))
            time.sleep(interval)
    except KeyboardInterrupt:
        # Ctrl-C reached the measured command too (the terminal signals the whole group); it says what it left.
        process.wait()
    return Measurement(list(command), process.returncode, time.perf_counter() - start, peak, peak_rss, peak_processes)


def _cli(args: argparse.Namespace) -> int:
    command = args.command_line[1:] if args.command_line[:1] == ["--"] else args.command_line
    if not command:
        raise ValueError("give the command to measure after --, e.g. flowcut-hf measure -- flowcut-hf export ...")
    result = measure(command, interval=args.interval)
    gib = 1024**3
    print(
        f"flowcut-hf measure: peak {result.peak_bytes / gib:.2f} GiB (PSS; RSS {result.peak_rss_bytes / gib:.2f} GiB) "
        f"over {result.peak_processes} process(es), wall {result.wall_seconds:.1f} s, exit code {result.returncode}",
        file=sys.stderr,
    )
    if args.json:
        args.json.write_text(json.dumps(asdict(result), indent=2) + "\n")
    return result.returncode


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "measure", help="peak memory (all processes) and wall time of a command",
        description=plain_help(__doc__), formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--interval", type=float, default=0.05, help="seconds between samples (default 0.05)")
    parser.add_argument("--json", type=Path, default=None, help="also write the measurement as JSON")
    parser.add_argument("command_line", nargs=argparse.REMAINDER, help="-- COMMAND [ARGS...]")
    parser.set_defaults(func=_cli)


__all__ = ["Measurement", "measure", "process_tree"]
