"""The command line entry point, run for real as a subprocess."""

import subprocess
import sys

import deepcurvature as dc


def run(*args):
    return subprocess.run(
        [sys.executable, "-m", "deepcurvature.cli.main", *args],
        capture_output=True,
        text=True,
        timeout=300,
    )


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
