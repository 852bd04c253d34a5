"""Errors raised when a data set cannot be found or fetched."""

from __future__ import annotations

__all__ = ["DatasetNotFoundError", "MissingDependencyError"]


class DatasetNotFoundError(FileNotFoundError):
    """A data set's files are not where expected; the message says how to get them."""


class MissingDependencyError(ImportError, ValueError):
    """An optional dependency (torchvision, for downloads) is not installed."""
