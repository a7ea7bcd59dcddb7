"""``flowcut-hf measure``: the peak memory of a command counts the processes it starts, not only itself."""

from __future__ import annotations

import json
import sys

from flowcut_hf.cli import main

CHILD_HOLDS_300_MIB = (
    "import subprocess, sys; subprocess.run([sys.executable, '-c', "
    "'import time; block = bytearray(300 * 2**20); time.sleep(1.0)'], check=True)"
)


def test_peak_memory_includes_the_child_processes_and_the_exit_code_passes_through(tmp_path):
    out = tmp_path / "measure.json"
    assert main(["measure", "--json", str(out), "--", sys.executable, "-c", CHILD_HOLDS_300_MIB]) == 0
    result = json.loads(out.read_text())
    assert result["peak_bytes"] >= 300 * 2**20, "the child's 300 MiB are part of the peak"
    assert result["peak_rss_bytes"] >= result["peak_bytes"]
    assert result["peak_processes"] >= 2
    assert main(["measure", "--", sys.executable, "-c", "raise SystemExit(3)"]) == 3
    assert main(["measure"]) == 2, "no command: a clear error"
