"""Output folders that never lose a result: created atomically, refused when they hold results.

An :class:`OutputFolder` is where one run writes its results:

* a default folder ``ROOT/KIND-YYYYmmdd-HHMMSS`` is made with ``os.mkdir``, which fails when the
  name exists, so two runs started in the same second get ``...-HHMMSS`` and ``...-HHMMSS-2``;
* an explicit folder may exist, but if it already holds any of the files the run will write, the
  run is refused (:class:`OutputExistsError`) unless ``overwrite=True``;
* :meth:`OutputFolder.cleanup` (run on any exception, SIGINT and SIGTERM included, when used as a
  context manager) removes only what this process made: the declared output files that did not
  exist when the folder was claimed, their atomic-write temporaries, and the folders it created
  (the run folder and the parents it had to make), each only once it is empty. It never removes a
  file it did not write and never removes a folder recursively.

In a data-parallel run (``torchrun``) only rank 0 claims the folder; the other ranks hold an
:meth:`OutputFolder.follow` of the path rank 0 chose, which never writes or removes anything.
"""

from __future__ import annotations

import datetime as _dt
import errno
import fnmatch
import os
from collections.abc import Iterable, Sequence
from pathlib import Path
from types import TracebackType

__all__ = ["OutputExistsError", "OutputFolder", "make_dirs"]


class OutputExistsError(FileExistsError):
    """The output folder already holds results of the kind a run would write."""

    def __init__(self, folder: Path, conflicts: Sequence[Path], fix: str) -> None:
        names = ", ".join(p.name + ("/" if p.is_dir() else "") for p in conflicts[:5])
        more = f" (+{len(conflicts) - 5} more)" if len(conflicts) > 5 else ""
        super().__init__(
            f"{folder} already holds results ({names}{more}): choose another output folder, "
            f"or {fix} to replace them"
        )
        self.folder, self.conflicts = folder, list(conflicts)


def make_dirs(path: Path) -> list[Path]:
    """``mkdir -p path``; return the folders that this call created, outermost first."""
    missing: list[Path] = []
    p = path
    while not p.exists():
        missing.append(p)
        if p.parent == p:
            break
        p = p.parent
    if p.exists() and not p.is_dir():
        raise NotADirectoryError(
            errno.ENOTDIR, "a part of the path is a file, not a folder", str(p)
        )
    created: list[Path] = []
    for d in reversed(missing):
        try:
            d.mkdir()
        except FileExistsError:
            if not d.is_dir():
                raise
            continue  # made meanwhile by another process: not ours
        created.append(d)
    return created


def _matches(folder: Path, patterns: Iterable[str]) -> set[Path]:
    """Paths in ``folder`` (one level, or ``sub/pattern``) that match the glob ``patterns``."""
    found: set[Path] = set()
    for pattern in patterns:
        sub, _, leaf = pattern.rpartition("/")
        base = folder / sub if sub else folder
        if not base.is_dir():
            continue
        try:
            names = os.listdir(base)
        except OSError:
            continue
        found.update(base / n for n in names if fnmatch.fnmatchcase(n, leaf))
    return found


def _temporaries(patterns: Iterable[str]) -> list[str]:
    """Glob patterns of the atomic-write temporaries (``.NAME.XXXX.tmp``) of ``patterns``."""
    out = []
    for pattern in patterns:
        sub, _, leaf = pattern.rpartition("/")
        out.append(f"{sub}/.{leaf}.*.tmp" if sub else f".{leaf}.*.tmp")
    return out


class OutputFolder:
    """A folder one run writes into, claimed so that no other result is lost (module docstring).

    Args:
        path: the folder.
        outputs: glob patterns, relative to the folder, of every file the run may write
            (``"spectrum.npz"``, ``"train/checkpoint-*.pt"``).
        created: the folders made for this run (the run folder and new parents).
        owned: whether this process claimed the folder (``False``: :meth:`follow`).
    """

    def __init__(
        self, path: Path, outputs: Sequence[str], created: Sequence[Path], *, owned: bool = True
    ) -> None:
        self.path = Path(path)
        self.outputs = list(outputs)
        self.created = list(created)
        self.owned = owned
        self._before = {p: _identity(p) for p in self._now()} if owned else {}

    @classmethod
    def follow(cls, path: str | os.PathLike, outputs: Sequence[str]) -> OutputFolder:
        """The folder another process (rank 0) claimed: nothing is made, checked or removed."""
        return cls(Path(path), outputs, (), owned=False)

    @classmethod
    def claim(
        cls,
        out: str | os.PathLike | None,
        *,
        kind: str,
        outputs: Sequence[str],
        overwrite: bool = False,
        root: str | os.PathLike = "runs",
        fix: str = "pass overwrite=True",
    ) -> OutputFolder:
        """Create or check the output folder of a run (before anything is written into it).

        Args:
            out: the folder asked for; ``None`` makes a new ``root/KIND-YYYYmmdd-HHMMSS[-k]``.
            kind: the prefix of a default folder's name.
            outputs: glob patterns of the files the run writes (relative to the folder).
            overwrite: allow replacing those files when they exist.
            root: where default folders go.
            fix: how the user allows overwriting, for the message (e.g. ``"pass --overwrite"``).

        Raises:
            OutputExistsError: the folder holds one of ``outputs`` and ``overwrite`` is False.
            NotADirectoryError: ``out`` (or a parent) is a file.
            OSError: the folder cannot be made (permissions, read-only or full file system...).
        """
        if out is None:
            path, created = _new_unique(Path(root), kind)
            return cls(path, outputs, created)
        path = Path(out)
        if path.exists() and not path.is_dir():
            raise NotADirectoryError(
                errno.ENOTDIR, "it exists and is not a folder: choose another path", str(path)
            )
        if path.is_dir() and not overwrite:
            conflicts = sorted(_matches(path, outputs))
            if conflicts:
                raise OutputExistsError(path, conflicts, fix)
        created = make_dirs(path)
        _check_writable(path)
        return cls(path, outputs, created)

    def _now(self) -> set[Path]:
        return _matches(self.path, self.outputs + _temporaries(self.outputs))

    def stale(self) -> list[Path]:
        """Declared output files that existed before this run and were not rewritten since."""
        return sorted(
            p
            for p, ident in self._before.items()
            if ident is not None and p.is_file() and _identity(p) == ident
        )

    def written(self) -> list[Path]:
        """Declared outputs (and temporaries) that appeared since the folder was claimed."""
        return sorted(self._now() - set(self._before))

    def remove_stale(self) -> list[Path]:
        """Remove :meth:`stale` files (after a successful run with ``overwrite``); return them.

        They are earlier results of the same kind that this run did not replace (an old
        ``checkpoint-00010.pt`` beside a new 5-epoch run), which would otherwise be mistaken for
        this run's.
        """
        removed: list[Path] = []
        if not self.owned:
            return removed
        for p in self.stale():
            try:
                p.unlink()
            except OSError:
                continue
            removed.append(p)
        return removed

    def cleanup(self) -> None:
        """Remove what this run made (files first, then its folders once empty); never more."""
        if not self.owned:
            return
        for p in sorted(self.written(), key=lambda q: len(q.parts), reverse=True):
            try:
                if p.is_dir() and not p.is_symlink():
                    p.rmdir()  # only an empty folder that appeared for this run
                else:
                    p.unlink()
            except OSError:
                pass
        for d in sorted(self.created, key=lambda q: len(q.parts), reverse=True):
            try:
                d.rmdir()
            except OSError:
                pass  # not empty (someone else's files) or already gone

    def __enter__(self) -> OutputFolder:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if exc_type is not None:
            self.cleanup()


def _check_writable(path: Path) -> None:
    """Fail early, with the system's reason, when nothing can be written into ``path``."""
    if os.statvfs(path).f_flag & os.ST_RDONLY:
        raise OSError(errno.EROFS, os.strerror(errno.EROFS), str(path))
    if not os.access(path, os.W_OK | os.X_OK):
        raise PermissionError(errno.EACCES, os.strerror(errno.EACCES), str(path))


def _identity(path: Path) -> tuple[int, int, int] | None:
    """``(device, inode, mtime)`` of a file: an atomic rewrite gives a new inode."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_dev, st.st_ino, st.st_mtime_ns


def _new_unique(root: Path, kind: str) -> tuple[Path, list[Path]]:
    """``mkdir root/KIND-STAMP``, then ``-2``, ``-3``... until a name is free (atomic)."""
    stamp = _dt.datetime.now().strftime("%Y%m%d-%H%M%S")
    created: list[Path] = []
    for attempt in range(1, 10_000):
        name = f"{kind}-{stamp}" if attempt == 1 else f"{kind}-{stamp}-{attempt}"
        path = root / name
        created += make_dirs(root)
        try:
            path.mkdir()
        except FileExistsError:
            continue
        except FileNotFoundError:  # the parent was removed by another run's clean-up: retry
            continue
        return path, [*created, path]
    raise FileExistsError(errno.EEXIST, "no free run folder name", str(root / f"{kind}-{stamp}"))
