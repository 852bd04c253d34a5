"""Errors of the command line."""


class CommandError(Exception):
    """A user error in a subcommand: printed as one line naming the fix, exit status 2."""
