"""The command line entry point, run for real as a subprocess."""

import deepcurvature as dc
from _helpers import cli as run_cli


def run(*args):
    return run_cli(*args)


def test_version_and_help():
    out = run("--version")
    assert out.returncode == 0
    assert dc.__version__ in out.stdout
    out = run("--help")
    assert out.returncode == 0
    assert "Lanczos" in out.stdout and "COMMAND" in out.stdout


def test_unknown_command_fails():
    out = run("no-such-command")
    assert out.returncode != 0
    assert "invalid choice" in out.stderr
