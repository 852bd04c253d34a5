"""Files on disk: atomic writes, npz + JSON result files, one-line reasons for bad files."""

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text
from .errors import escape_surrogates, invalid_file, read_failure, unreadable_file
from .results import load_npz_json, npz_names, read_json, read_npz, save_npz_json

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "escape_surrogates",
    "invalid_file",
    "load_npz_json",
    "npz_names",
    "read_failure",
    "read_json",
    "read_npz",
    "save_npz_json",
    "unreadable_file",
]
