"""The one "sha256 of every file, marker written last" protocol, for stage outputs and checkpoints.

A writer records each file of a directory with `digest_files` and writes its marker (a stage's
`_manifest.json`, a checkpoint's completion marker) last, after the files; a reader trusts the
directory only when `first_problem` finds none: every listed file is there, inside the directory
(no symlink, no path leading out of it), with the recorded size (where one was recorded) and sha256.
How the marker is laid out on disk, and what a problem is reported as, is the caller's business.

A leaf module: it imports nothing from tokenweight, so any layer may use it.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal


def sha256_file(path: str | Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


class SymlinkError(ValueError):
    """A directory being digested contains a symlink: what it points to is not the directory's."""

    def __init__(self, path: Path):
        super().__init__(f"{path} is a symlink")
        self.path = path


def digest_files(directory: Path, exclude: Iterable[str] = ()) -> dict[str, dict[str, Any]]:
    """`{relative posix path: {"bytes": size, "sha256": hex}}` of every file under `directory`
    (sorted by path), leaving out the relative paths in `exclude`; a symlink raises SymlinkError."""
    skip = set(exclude)
    files = {}
    for path in sorted(p for p in directory.rglob("*") if p.is_file() or p.is_symlink()):
        if path.is_symlink():
            raise SymlinkError(path)
        rel = path.relative_to(directory).as_posix()
        if rel not in skip:
            files[rel] = {"bytes": path.stat().st_size, "sha256": sha256_file(path)}
    return files


@dataclass(frozen=True)
class FileProblem:
    """Why a listed file cannot be trusted. kind: "outside" (a symlink, or a path leading out of
    the directory), "missing", "bytes" (`actual` is its size) or "sha256"."""

    path: Path
    kind: Literal["outside", "missing", "bytes", "sha256"]
    expected: Any = None
    actual: Any = None


def first_problem(directory: Path, files: Mapping[str, Mapping[str, Any]]) -> FileProblem | None:
    """The first of `files` (as `digest_files` lists them; "bytes" may be left out, then the size
    is not checked) that does not match `directory`, in their order; None when all of them do."""
    inside = directory.resolve()
    for rel, meta in files.items():
        path = directory / rel
        # Checked before reading anything: a listing edited to name `../x` or a symlink must not
        # make the reader hash (or later load) a file outside the directory.
        if path.is_symlink() or not path.resolve().is_relative_to(inside):
            return FileProblem(path, "outside")
        try:
            size = path.stat().st_size
        except FileNotFoundError:
            return FileProblem(path, "missing")
        if "bytes" in meta and size != meta["bytes"]:
            return FileProblem(path, "bytes", meta["bytes"], size)
        if sha256_file(path) != meta["sha256"]:
            return FileProblem(path, "sha256", meta["sha256"])
    return None
