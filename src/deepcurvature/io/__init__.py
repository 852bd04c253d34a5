"""Files on disk: atomic writes and npz + JSON result files."""

from .atomic import atomic_write, atomic_write_bytes, atomic_write_text
from .results import load_npz_json, save_npz_json

__all__ = [
    "atomic_write",
    "atomic_write_bytes",
    "atomic_write_text",
    "load_npz_json",
    "save_npz_json",
]
