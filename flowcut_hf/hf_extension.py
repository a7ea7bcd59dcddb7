"""``flowcut-hf install-hf-extension``: make ``hf flowcut ...`` run this installation's ``hf-flowcut`` command.

The ``hf`` CLI (huggingface_hub 2.x) runs an unknown top-level command ``hf NAME`` through the extension registered
under ``~/.local/share/hf/extensions/hf-NAME/manifest.json``: its ``executable_path`` receives the remaining
arguments. ``hf extensions install OWNER/hf-flowcut`` writes that manifest after installing this package into a venv of
its own (the repository's ``pyproject.toml`` exposes the ``hf-flowcut`` console script it looks for). This command
writes the same manifest for the ``hf-flowcut`` script that is already installed, with no download. Standard library
only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
from datetime import datetime, timezone
from pathlib import Path

EXTENSION_NAME = "flowcut"
CONSOLE_SCRIPT = f"hf-{EXTENSION_NAME}"
EXTENSIONS_ROOT = Path("~/.local/share/hf/extensions")
"""Where huggingface_hub's ``hf`` CLI looks for extensions (``huggingface_hub.cli.extensions.EXTENSIONS_ROOT``)."""
MANIFEST_NAME = "manifest.json"
DESCRIPTION = "FlowCut / VFlowOpt visual-token pruning: export, bench, visualize (flowcut-hf)"


def register_cli(subparsers) -> None:
    parser = subparsers.add_parser(
        "install-hf-extension",
        help="register this installation as the `hf flowcut` command of the hf CLI (once)",
        description="Register the installed hf-flowcut command as a local extension of the hf CLI, so that "
        "`hf flowcut export ...` runs `flowcut-hf export ...`. Nothing is downloaded. Undo with "
        "`hf extensions remove flowcut`.",
    )
    parser.add_argument("--force", action="store_true", help="replace an hf-flowcut extension that runs another program")
    parser.set_defaults(func=run)


def installed_console_script() -> Path:
    """The ``hf-flowcut`` script of the environment this command runs in."""
    beside_python = Path(sys.executable).parent / CONSOLE_SCRIPT
    if beside_python.is_file():
        return beside_python.resolve()
    on_path = shutil.which(CONSOLE_SCRIPT)
    if on_path:
        return Path(on_path).resolve()
    raise FileNotFoundError(
        f"the {CONSOLE_SCRIPT} command of flowcut-hf is not installed in {Path(sys.executable).parent} nor on PATH; "
        "reinstall the package (pip install flowcut-hf) and run this again."
    )


def install_hf_extension(force: bool = False) -> tuple[Path, Path, bool]:
    """Writes the manifest. Returns ``(manifest path, executable, whether an existing registration was replaced)``."""
    executable = installed_console_script()
    extension_dir = EXTENSIONS_ROOT.expanduser() / CONSOLE_SCRIPT
    manifest_path = extension_dir / MANIFEST_NAME
    replaced = False
    if manifest_path.is_file():
        try:
            previous = json.loads(manifest_path.read_text()).get("executable_path")
        except (OSError, ValueError):
            previous = None
        replaced = previous is not None and Path(previous).expanduser() != executable
        if replaced and not force:
            raise FileExistsError(
                f"`hf {EXTENSION_NAME}` already runs {previous} (registered in {manifest_path}); pass --force to make "
                f"it run {executable} instead."
            )
    manifest = {
        # Registered from an installed package, not from GitHub: `hf extensions update` does not apply (upgrade
        # with pip and run this command again if the environment moved).
        "owner": "local",
        "repo": CONSOLE_SCRIPT,
        "repo_id": f"local/{CONSOLE_SCRIPT}",
        "short_name": EXTENSION_NAME,
        "executable_path": str(executable),
        "type": "binary",
        "installed_at": datetime.now(timezone.utc).isoformat(),
        "description": DESCRIPTION,
        "commit_sha": None,
    }
    extension_dir.mkdir(parents=True, exist_ok=True)
    staging = manifest_path.with_suffix(".json.tmp")
    staging.write_text(json.dumps(manifest, indent=2, sort_keys=True))
    os.replace(staging, manifest_path)
    return manifest_path, executable, replaced


def run(args: argparse.Namespace) -> int:
    manifest_path, executable, replaced = install_hf_extension(force=args.force)
    action = "replaced the previous registration" if replaced else "registered"
    print(f"{action}: `hf {EXTENSION_NAME} ...` now runs {executable} ({manifest_path}).")
    print(f"Try: hf {EXTENSION_NAME} export --help")
    return 0
