import argparse
import subprocess
import sys

from edgeseg.cli import build_parser


def _subcommands(parser):
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            return action.choices
    return {}


def test_every_option_of_every_command_has_help_text():
    parser = build_parser()
    commands = _subcommands(parser)
    for name, sub in {"edgeseg": parser, **commands}.items():
        for action in sub._actions:
            if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
                continue
            assert action.help, f"`edgeseg {name}`: option {action.option_strings or action.dest} has no help text"


def test_version_flag():
    out = subprocess.run([sys.executable, "-m", "edgeseg", "--version"], capture_output=True, text=True)
    assert out.returncode == 0 and out.stdout.startswith("edgeseg ")


def test_unknown_command_is_a_usage_error():
    out = subprocess.run([sys.executable, "-m", "edgeseg", "no-such-command"], capture_output=True, text=True)
    assert out.returncode == 2 and "invalid choice" in out.stderr
