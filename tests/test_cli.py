"""The command line as a whole: help that reads as plain text, one word per concept (old spellings still work, with a
note), and one line for Ctrl-C."""

from __future__ import annotations

import argparse

import pytest

from flowcut_hf import cli
from flowcut_hf.cli import SUBCOMMAND_MODULES, build_parser, builtin_model_name, report_errors


def subparsers(parser: argparse.ArgumentParser) -> dict[str, argparse.ArgumentParser]:
    (action,) = [a for a in parser._actions if isinstance(a, argparse._SubParsersAction)]
    return dict(action.choices)


@pytest.mark.parametrize("command", list(SUBCOMMAND_MODULES))
def test_help_is_plain_text_and_every_option_says_what_it_does(command):
    parser = subparsers(build_parser(command))[command]
    text = parser.format_help()
    for markup in ("``", ":func:", ":class:", ":mod:", ":meth:", "§", "spec "):
        assert markup not in text, f"{command} --help shows {markup!r}"
    undocumented = [a.option_strings or [a.dest] for a in parser._actions
                    if a.help is None and not isinstance(a, argparse._HelpAction)]
    assert not undocumented, f"{command}: options without help: {undocumented}"


@pytest.mark.parametrize("command", ["bench", "visualize"])
def test_the_family_option_was_preset_which_still_works_with_a_note(command, capsys):
    parser = build_parser(command)
    args = parser.parse_args([command, "tiny", "--family", "llava-next"])
    assert args.family == "llava-next" and capsys.readouterr().err == ""
    args = parser.parse_args([command, "tiny", "--preset", "llava-next"])
    assert args.family == "llava-next"
    assert "--preset is deprecated and will be removed; use --family llava-next" in capsys.readouterr().err
    help_text = subparsers(parser)[command].format_help()
    assert "--family" in help_text and "--preset" not in help_text, "the old spelling is not advertised"


def test_renamed_built_in_names_still_work_with_a_note(capsys):
    assert builtin_model_name("builtin") == "builtin" and capsys.readouterr().err == ""
    assert builtin_model_name("preset") == "builtin"
    assert "'preset' is deprecated" in capsys.readouterr().err
    args = build_parser("demo").parse_args(["demo", "--family", "qwen2_5_vl"])
    assert args.family == "qwen2.5-vl" and "use --family qwen2.5-vl" in capsys.readouterr().err


def test_ctrl_c_is_one_line_and_exit_code_130(capsys):
    def interrupted():
        raise KeyboardInterrupt

    assert report_errors("bench", interrupted) == cli.EXIT_INTERRUPTED == 130
    assert capsys.readouterr().err == "flowcut-hf bench: interrupted\n"
    assert report_errors("export", interrupted, "interrupted; nothing was written") == 130
    assert capsys.readouterr().err == "flowcut-hf export: interrupted; nothing was written\n"
