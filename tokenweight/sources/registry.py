"""Every source kind in one table: how to read it and what identifies its content.

The prepare stage's key holds the source's fingerprint, so that an edited data file or generator
re-runs it. A source kind is usable only once it has an entry here with both a reader and a
fingerprint: `reader` and `fingerprint` raise for a kind without one (never a silent `{}`, which
would cache a new source regardless of its content), and tests/sources/test_registry.py checks
that every kind the config accepts is listed.

A generated source's content is its generator: its version where it has one and the text of the
code it runs.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from types import ModuleType
from typing import Any

from ..config import (
    BfclRolesSource,
    BfclSource,
    FileSource,
    Gsm8kSource,
    ReasoningGymSource,
    RolesSource,
    SyntheticSource,
)
from ..file_digests import sha256_file
from ..samples import Reject, Sample


class PrepareError(ValueError):
    """The source cannot be used (a missing file, an unknown kind, too many rejects)."""


@dataclass(frozen=True)
class SourceKind:
    read: Callable[[Any], Iterable[Sample | Reject]]
    fingerprint: Callable[[Any], dict[str, Any]]


def code_hashes(*modules: ModuleType) -> dict[str, str]:
    """sha256 of each module's source text (line endings normalised, so that a checkout with CRLF
    gives the same key), by module name."""
    return {module.__name__.rsplit(".", 1)[-1]: hashlib.sha256(
        Path(module.__file__).read_bytes().replace(b"\r\n", b"\n")).hexdigest() for module in modules}


def _read_file(source: FileSource):
    from .chat_files import read_chat_file

    return read_chat_file(source.path, source.call_format)


def _file_fingerprint(source: FileSource) -> dict[str, Any]:
    path = Path(source.path)
    if not path.is_file():
        raise PrepareError(f"{path}: data file not found")
    return {"sha256": sha256_file(path), **_call_format_code(source.call_format)}


def _call_format_code(call_format: str) -> dict[str, Any]:
    """The code that writes hermes and react calls, for sources written in them (python's writer is
    older than call formats: a store made before them keeps its keys)."""
    from . import call_formats, tools_text

    return {} if call_format == "python" else {"call_format_code": code_hashes(call_formats, tools_text)}


def _read_bfcl(source: BfclSource):
    from .bfcl import read_bfcl

    return read_bfcl(source.categories, source.limit_per_category, source.call_format)


def _bfcl_files(categories: list[str]) -> dict[str, str]:
    from .bfcl import category_files

    return {str(p.name): sha256_file(p) for c in categories for p in category_files(c)}


def _bfcl_fingerprint(source: BfclSource) -> dict[str, Any]:
    return {"bfcl_eval": importlib.metadata.version("bfcl-eval"), "files": _bfcl_files(source.categories),
            **_call_format_code(source.call_format)}


def _read_synthetic(source: SyntheticSource):
    from .synthetic import generate_synthetic

    return generate_synthetic(source.n, source.seed)


def _synthetic_fingerprint(source: SyntheticSource) -> dict[str, Any]:
    from . import synthetic, tools_text

    return {"code": code_hashes(synthetic, tools_text)}


def _read_roles(source: RolesSource):
    from .role_suite import generate_role_suite

    return generate_role_suite(source.n, source.seed, source.format)


def _roles_fingerprint(source: RolesSource) -> dict[str, Any]:
    from . import call_formats, role_suite, synthetic, tools_text

    return {"role_suite": role_suite.VERSION, "code": code_hashes(role_suite, synthetic, tools_text, call_formats)}


def _read_bfcl_roles(source: BfclRolesSource):
    from .bfcl_roles import read_bfcl_roles

    return read_bfcl_roles(source.categories, source.limit_per_category)


def _bfcl_roles_fingerprint(source: BfclRolesSource) -> dict[str, Any]:
    from . import bfcl, bfcl_roles, tools_text

    return {"bfcl_eval": importlib.metadata.version("bfcl-eval"), "files": _bfcl_files(source.categories),
            "bfcl_roles": bfcl_roles.VERSION, "code": code_hashes(bfcl, bfcl_roles, tools_text)}


def _read_gsm8k(source: Gsm8kSource):
    from .gsm import read_gsm8k_test

    return read_gsm8k_test(source.limit)


def _gsm8k_fingerprint(source: Gsm8kSource) -> dict[str, Any]:
    from .gsm import gsm8k_test_file

    return {"sha256": sha256_file(gsm8k_test_file())}


def _read_reasoning_gym(source: ReasoningGymSource):
    from .gsm import generate_gsm_problems

    return generate_gsm_problems(source.n, source.seed)


def _reasoning_gym_fingerprint(source: ReasoningGymSource) -> dict[str, Any]:
    from .gsm import gsm_symbolic_files, reasoning_gym_version

    return {"reasoning_gym": reasoning_gym_version(), "files": {p.name: sha256_file(p) for p in gsm_symbolic_files()}}


SOURCES: dict[type, SourceKind] = {
    FileSource: SourceKind(_read_file, _file_fingerprint),
    BfclSource: SourceKind(_read_bfcl, _bfcl_fingerprint),
    SyntheticSource: SourceKind(_read_synthetic, _synthetic_fingerprint),
    RolesSource: SourceKind(_read_roles, _roles_fingerprint),
    BfclRolesSource: SourceKind(_read_bfcl_roles, _bfcl_roles_fingerprint),
    Gsm8kSource: SourceKind(_read_gsm8k, _gsm8k_fingerprint),
    ReasoningGymSource: SourceKind(_read_reasoning_gym, _reasoning_gym_fingerprint),
}


def _kind(source: Any) -> SourceKind:
    try:
        return SOURCES[type(source)]
    except KeyError:
        raise PrepareError(f"source {getattr(source, 'kind', type(source).__name__)!r} has no entry in "
                          "tokenweight/sources/registry.py SOURCES (a reader and a fingerprint)") from None


def read_source(source: Any) -> Iterable[Sample | Reject]:
    """The source's samples, and its rows that cannot be samples (rejects with file and line)."""
    return _kind(source).read(source)


def source_fingerprint(source: Any) -> dict[str, Any]:
    """What identifies the source's content, so that an edited file or generator re-runs prepare."""
    return _kind(source).fingerprint(source)


def read_sources(source: Any, eval_source: Any | None) -> Iterator[tuple[Sample | Reject, str | None]]:
    """(item, fixed split) pairs: with an eval_source, `source` is all train and it all eval."""
    if eval_source is None:
        for item in read_source(source):
            yield item, None
        return
    for src, split in ((source, "train"), (eval_source, "eval")):
        for item in read_source(src):
            yield item, split
