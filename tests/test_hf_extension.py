"""`hf flowcut ...`: the hf CLI runs flowcut-hf as an extension, registered once by `flowcut-hf install-hf-extension`."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

from flowcut_hf.families.llava.builtin import build_tiny_llava

BIN = Path(sys.executable).parent
REPO_ROOT = Path(__file__).resolve().parents[1]


def run(command: str, *args: str, home: Path) -> subprocess.CompletedProcess:
    # HF_HUB_DISABLE_UPDATE_CHECK: the hf CLI would otherwise ask GitHub whether the extension has a newer version.
    env = {**os.environ, "HOME": str(home), "HF_HUB_DISABLE_UPDATE_CHECK": "1", "HF_HUB_OFFLINE": "1"}
    return subprocess.run([str(BIN / command), *args], capture_output=True, text=True, env=env, timeout=600)


def test_hf_flowcut_runs_the_installed_command_after_registering_it(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    assert run("hf", "flowcut", "--help", home=home).returncode != 0, "not an hf command before registering"

    registered = run("flowcut-hf", "install-hf-extension", home=home)
    assert registered.returncode == 0, registered.stderr
    manifest_path = home / ".local/share/hf/extensions/hf-flowcut/manifest.json"
    manifest = json.loads(manifest_path.read_text())
    assert manifest["short_name"] == "flowcut" and Path(manifest["executable_path"]) == (BIN / "hf-flowcut").resolve()

    listed = run("hf", "extensions", "list", "--format", "json", home=home)
    assert any(row["command"] == "hf flowcut" for row in json.loads(listed.stdout)), listed.stdout
    help_text = run("hf", "flowcut", "export", "--help", home=home)
    assert help_text.returncode == 0 and "usage: hf flowcut export" in help_text.stdout and "--target-num" in help_text.stdout

    base = tmp_path / "llava-tiny"
    model, processor = build_tiny_llava(seed=0)
    model.save_pretrained(base)
    processor.save_pretrained(base)
    dry_run = run("hf", "flowcut", "export", str(base), "--target-num", "32", "--out", str(tmp_path / "out"),
                  "--base-model", "org/llava-tiny", "--dry-run", home=home)
    assert dry_run.returncode == 0, dry_run.stderr
    assert "dry run: nothing is written or pushed" in dry_run.stdout and "llava-tiny-flowcut32" in dry_run.stdout
    assert not (tmp_path / "out").exists()

    # Registering again is harmless; an extension that runs something else is replaced only with --force.
    assert run("flowcut-hf", "install-hf-extension", home=home).returncode == 0
    manifest_path.write_text(json.dumps({**manifest, "executable_path": "/opt/other/hf-flowcut"}))
    refused = run("flowcut-hf", "install-hf-extension", home=home)
    assert refused.returncode == 2 and "/opt/other/hf-flowcut" in refused.stderr and "--force" in refused.stderr
    assert run("flowcut-hf", "install-hf-extension", "--force", home=home).returncode == 0
    assert json.loads(manifest_path.read_text())["executable_path"] == manifest["executable_path"]


def test_the_repository_installs_as_an_hf_extension_from_github():
    # `hf extensions install OWNER/hf-flowcut` takes a root file named hf-flowcut for a shell-script extension; without
    # one it pip-installs the repository and runs the hf-flowcut console script it must provide.
    assert not (REPO_ROOT / "hf-flowcut").exists()
    scripts = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    assert scripts["hf-flowcut"] == scripts["flowcut-hf"] == "flowcut_hf.cli:main"
