"""The ``flowcut-hf`` (alias ``hf-flowcut``) command line.

Each subcommand lives in its own module, which exposes ``register_cli(subparsers)``; the parser it adds sets
``func`` to a callable taking the parsed arguments and returning an exit code.
"""

from __future__ import annotations

import argparse
import importlib
import re
import sys
import warnings
from collections.abc import Callable, Sequence
from pathlib import Path

SUBCOMMAND_MODULES = {
    "demo": "flowcut_hf.demo",
    "export": "flowcut_hf.export_cli",
    "bench": "flowcut_hf.bench",
    "visualize": "flowcut_hf.visualize",
    "search": "flowcut_hf.search",
    "measure": "flowcut_hf.measure",
    "install-hf-extension": "flowcut_hf.hf_extension",
}


def build_parser(command: str | None = None) -> argparse.ArgumentParser:
    """The full parser, or (``command`` given) one that knows only that subcommand: its module alone is imported,
    so ``flowcut-hf export`` does not pay for the torch imports of ``demo`` or ``bench``."""
    parser = argparse.ArgumentParser(
        # Run by the hf CLI as the `hf flowcut` extension, the usage lines show the command the user typed.
        prog="hf flowcut" if Path(sys.argv[0]).name == "hf-flowcut" else "flowcut-hf",
        description="FlowCut (and VFlowOpt) visual-token pruning for Hugging Face vision-language models.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {_version()}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module_name in SUBCOMMAND_MODULES.items():
        if command is not None and name != command:
            continue
        try:
            module = importlib.import_module(module_name)
        except ModuleNotFoundError as error:
            if error.name != module_name:
                raise
            continue
        module.register_cli(subparsers)
    return parser


def target_num_argument(text: str) -> int:
    """``--target-num``'s type: a whole number of visual tokens kept per image, at least 1."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1 or str(value) != text.strip():
        raise argparse.ArgumentTypeError(
            f"must be a whole number of visual tokens kept per image, at least 1 (e.g. 64), got {text!r}"
        )
    return value


def retain_ratio_argument(text: str) -> float:
    """``--retain-ratio``'s type: the share of each image's tokens kept, in (0, 1]."""
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(
            f"must be the share of each image's tokens kept, above 0 and at most 1 (e.g. 0.111), got {text!r}"
        )
    return value


BUILTIN_MODEL = "builtin"
"""The MODEL of bench and visualize that is built in: the family's 7B geometry at 1/4 width, random weights."""
TINY_MODEL = "tiny"
"""The MODEL that is built in at test size (real token geometry, tiny widths)."""
RENAMED_MODELS = {"preset": BUILTIN_MODEL}
"""Old names of the built-in models, still accepted with a note ("preset" now means a VFlowOpt preset only)."""


def deprecation_note(old: str, new: str) -> None:
    """Tells the user, on stderr, that ``old`` still works but is now spelled ``new``."""
    print(f"flowcut-hf: note: {old} is deprecated and will be removed; use {new}", file=sys.stderr)


def builtin_model_name(name: str) -> str:
    """``name`` of a MODEL argument with the old spellings of the built-in models renamed (with a note)."""
    if name in RENAMED_MODELS and not Path(name).exists():
        deprecation_note(f"the model name {name!r}", repr(RENAMED_MODELS[name]))
        return RENAMED_MODELS[name]
    return name


class RenamedOption(argparse.Action):
    """An option that was renamed: it still works, stores into the new option's ``dest`` and says the new name."""

    def __init__(self, option_strings, dest, new_name: str, **kwargs) -> None:
        super().__init__(option_strings, dest, **kwargs)
        self.new_name = new_name

    def __call__(self, parser, namespace, values, option_string=None) -> None:
        deprecation_note(option_string, f"{self.new_name} {values}")
        setattr(namespace, self.dest, values)


def add_family_option(parser: argparse.ArgumentParser, choices: Sequence[str], default: str, help: str) -> None:
    """``--family``: which model family a built-in model has. It was called ``--preset`` in bench and visualize, a word
    that now means only a VFlowOpt preset; that spelling keeps working, with a note."""
    parser.add_argument("--family", choices=choices, default=default, help=help)
    parser.add_argument("--preset", dest="family", choices=choices, action=RenamedOption, new_name="--family",
                        help=argparse.SUPPRESS)


RST_ROLE = re.compile(r":(?:func|class|mod|meth|data|attr|obj):`~?([^`]+)`")
RST_LITERAL = re.compile(r"``([^`]+)``")


def plain_help(docstring: str) -> str:
    """A module docstring as a command's ``--help`` text: the reStructuredText markup of the API docs taken out."""
    text = RST_ROLE.sub(lambda match: match.group(1), docstring)
    text = RST_LITERAL.sub(lambda match: match.group(1), text)
    return text.replace("::\n", ":\n")


def requested_command(argv: Sequence[str]) -> str | None:
    """The subcommand ``argv`` names, when it starts with one (options before it need the full parser)."""
    return argv[0] if argv and argv[0] in SUBCOMMAND_MODULES else None


def _version() -> str:
    from . import __version__

    return __version__


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    parser = build_parser(requested_command(argv))
    args = parser.parse_args(argv)
    if getattr(args, "func", None) is None:
        parser.print_help()
        return 2
    return report_errors(args.command, lambda: args.func(args), getattr(args, "on_interrupt", INTERRUPTED))


INTERRUPTED = "interrupted"
"""What a command says on Ctrl-C; a subcommand that can say more sets ``on_interrupt`` in its parser's defaults."""

EXIT_INTERRUPTED = 130
"""The shell's code for a command stopped by SIGINT (128 + 2)."""


def report_errors(command: str, work: Callable[[], int | None], on_interrupt: str = INTERRUPTED) -> int:
    """Runs ``work`` and turns the errors a user can fix (bad input, missing or existing files) into one line on
    stderr and exit code 2, and Ctrl-C into one line (the interruption's own message, or ``on_interrupt``) and exit
    code 130."""
    default_format = warnings.formatwarning

    def format_warning(message, category, filename, lineno, line=None) -> str:
        # Our own warnings name the flag that fixes them; the file and line of the code would only distract.
        if category.__module__.startswith("flowcut_hf"):
            return f"flowcut-hf {command}: warning: {message}\n"
        return default_format(message, category, filename, lineno, line)

    warnings.formatwarning = format_warning
    try:
        return int(work() or 0)
    except (ValueError, FileNotFoundError, FileExistsError) as error:
        print(f"flowcut-hf {command}: error: {error}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as interruption:
        print(f"flowcut-hf {command}: {str(interruption) or on_interrupt}", file=sys.stderr)
        return EXIT_INTERRUPTED


if __name__ == "__main__":
    sys.exit(main())
