"""Subcommands of ``deepcurvature``: one module each, discovered automatically.

Each module defines ``NAME`` (the subcommand), ``HELP`` (one line for ``--help``),
``DESCRIPTION`` (a paragraph), ``add_arguments(parser)`` and ``run(args) -> int``.
"""
