"""Prefect's cache records for the stage tasks: plain JSON beside the store, and never unpickled.

Each stage task's result (a small record: stage, key, uri, cached) is persisted by Prefect so
that its UI shows a finished stage as *Cached*. Prefect's default serializer is cloudpickle, and
on every read Prefect decodes a record with whatever serializer the record itself names, so a
record planted in a shared store (NFS, object storage) would run code on every worker that
reads it. Here:

- every stage task writes its record with `RECORD_SERIALIZER`: the stdlib `json` module with no
  object hooks, so a record is a JSON envelope holding a JSON string;
- records are read through `RecordStorage`, a Prefect storage block that hands Prefect a record
  only after checking that it names exactly that serializer and that its result is a flat JSON
  object of strings, numbers and booleans. Anything else (a pickle, another serializer, JSON
  with object hooks, a truncated file) is refused with a warning, and Prefect then treats it as a
  cache miss: the stage's manifest in the store decides, and the record is written anew.

The records live in `{store}/_prefect`, for a local store and for object storage alike, so that
every worker that sees the store sees the same records and wiping the store forgets them.
"""

from __future__ import annotations

import hashlib
import json
import logging
from typing import Any

from prefect._internal.compatibility.async_dispatch import async_dispatch
from prefect.filesystems import LocalFileSystem, RemoteFileSystem
from prefect.serializers import JSONSerializer

from .store import Store

def error_as_json(obj: Any) -> dict[str, str]:
    """What a failed stage's record holds: its exception as text (Prefect persists a failed task's
    exception too; without this the JSON serializer cannot, and Prefect warns on every failure)."""
    if isinstance(obj, BaseException):
        return {"error": type(obj).__name__, "message": str(obj)}
    raise TypeError(f"a stage record holds a {type(obj).__name__}, which is not JSON")


# Plain stdlib JSON on both sides: the encoder only turns a failure into text, and reading uses no
# object hook, so reading a record can build nothing but dicts, lists, strings and numbers.
RECORD_SERIALIZER = JSONSerializer(object_encoder=f"{__name__}.error_as_json", object_decoder=None)
_SAFE_SERIALIZER = RECORD_SERIALIZER.model_dump(mode="json")
_log = logging.getLogger("tokenweight.records")


class UnsafeRecord(ValueError):
    """A Prefect record that tokenweight will not let Prefect decode."""


def check_record(content: bytes, where: str) -> bytes:
    """`content` unchanged if it is a record tokenweight wrote (see the module docstring), else
    UnsafeRecord naming `where` and the reason."""
    try:
        envelope = json.loads(content.decode("utf-8"))
    except (UnicodeDecodeError, ValueError):
        raise _refuse(where, "not a JSON record (a pickle, or truncated)") from None
    if not isinstance(envelope, dict) or not isinstance(envelope.get("metadata"), dict):
        raise _refuse(where, "not a Prefect result record")
    serializer = envelope["metadata"].get("serializer")
    if serializer != _SAFE_SERIALIZER:
        kind = serializer.get("type") if isinstance(serializer, dict) else serializer
        raise _refuse(where, f"its serializer is {kind!r} with other settings than tokenweight's plain JSON")
    result = envelope.get("result")
    try:
        value = json.loads(result) if isinstance(result, str) else None
    except ValueError:
        value = None
    if not isinstance(value, dict) or not all(
            isinstance(k, str) and (v is None or isinstance(v, (str, int, float, bool))) for k, v in value.items()):
        raise _refuse(where, "its result is not a flat JSON object")
    return content


def _refuse(where: str, reason: str) -> UnsafeRecord:
    _log.warning("refusing Prefect record %s: %s; treating it as a cache miss", where, reason)
    return UnsafeRecord(f"{where}: {reason}")


class _CheckedReads:
    """Reads of a Prefect storage block that return only records `check_record` accepts."""

    async def aread_path(self, path: str) -> bytes:
        return check_record(await super().aread_path(path), f"{self.basepath}/{path}")

    @async_dispatch(aread_path)
    def read_path(self, path: str) -> bytes:
        return check_record(super().read_path(path, _sync=True), f"{self.basepath}/{path}")


class LocalRecordStorage(_CheckedReads, LocalFileSystem):
    """Record storage in a local (or network-mounted) directory."""

    _block_type_name = "tokenweight local record storage"
    _block_type_slug = "tokenweight-local-record-storage"
    _description = "Stage records of tokenweight in a local directory: plain JSON, checked before Prefect reads them."


class RemoteRecordStorage(_CheckedReads, RemoteFileSystem):
    """Record storage at an fsspec URL (object storage)."""

    _block_type_name = "tokenweight remote record storage"
    _block_type_slug = "tokenweight-remote-record-storage"
    _description = "Stage records of tokenweight at an fsspec URL: plain JSON, checked before Prefect reads them."


RecordStorage = LocalRecordStorage | RemoteRecordStorage


def record_storage(store: Store) -> RecordStorage:
    """The saved storage block for `{store}/_prefect` (Prefect's tasks take only saved blocks)."""
    basepath = f"{store.root}/_prefect" if store.is_local else f"{store.url}/_prefect"
    block = (LocalRecordStorage if store.is_local else RemoteRecordStorage)(basepath=basepath)
    block.save(f"tokenweight-records-{hashlib.sha256(basepath.encode()).hexdigest()[:12]}", overwrite=True)
    return block


def record_options() -> dict[str, Any]:
    """The task options every stage task runs with, besides its storage."""
    return {"persist_result": True, "result_serializer": RECORD_SERIALIZER}
