"""Reading chat fine-tuning files (JSONL or Parquet) into `Sample`s, with a `Reject` per bad row.

Accepted rows:
  {"id"?: str, "messages": [{"role", "content", "tool_calls"?}, ...], "tools"?: [...],
   "reasoning_spans"?: {"<message index>": [[start, end], ...]}, "answer"?: number}
  {"id"?: str, "prompt": str, "completion": str, "answer"?: number}
`answer` (a final number, as in GSM8K) lets the eval and critical stages check the model's answers.
Assistant `tool_calls` are written into the text in the call format asked for (call_formats.py:
`[name(arg=value, ...)]` after the content by default, or Hermes tags, or ReAct with the content as
the thought), and `tools` into the system message, so later stages only ever see role + text.

Whole-file problems (missing file, unknown suffix, Parquet without usable columns) raise at call
time; everything wrong with a single row becomes a Reject naming its line (1-based JSONL line or
Parquet row) and never stops the file. Message numbers in reasons are 0-based indices into the
row's `messages`, the same numbering `reasoning_spans` uses. A null field counts as absent,
because Parquet cannot tell the two apart.
"""

from __future__ import annotations

import json
import re
import unicodedata
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pyarrow.parquet as pq

from tokenweight.samples import ROLES, Sample, Reject
from tokenweight.sources.numbers import normalize_number
from tokenweight.sources.call_formats import assistant_text, system_text

JSONL_SUFFIXES = (".jsonl", ".json")
PARQUET_SUFFIX = ".parquet"
# Parquet stores nested data either as structs or as JSON text; these may come as text.
JSON_TEXT_COLUMNS = ("messages", "tools", "reasoning_spans")
BOM = b"\xef\xbb\xbf"
# Ids become file names downstream; the cap keeps them inside common file-name limits.
MAX_ID_CHARS = 200


class _BadRow(Exception):
    """A row-level problem; its message is the Reject reason."""


def read_chat_file(path: str, call_format: str = "python") -> Iterator[Sample | Reject]:
    """Samples and rejects from one JSONL or Parquet chat file, in file order, with tool calls
    written in `call_format`."""
    file = Path(path)
    if not file.is_file():
        raise FileNotFoundError(f"chat file not found: {path}")
    suffix = file.suffix.lower()
    if suffix in JSONL_SUFFIXES:
        rows = _jsonl_rows(path)
    elif suffix == PARQUET_SUFFIX:
        rows = _parquet_rows(path)
    else:
        raise ValueError(
            f"{path}: unsupported file type {suffix!r} (expected .jsonl, .json or .parquet)"
        )
    return _samples(path, rows, call_format)


def _samples(path: str, rows: Iterator[tuple[int, Any] | Reject], call_format: str) -> Iterator[Sample | Reject]:
    stem = re.sub(r"[^A-Za-z0-9_-]+", "_", Path(path).stem)
    first_line: dict[str, int] = {}
    for item in rows:
        if isinstance(item, Reject):
            yield item
            continue
        line, row = item
        result = _parse_row(path, line, stem, row, call_format)
        if isinstance(result, Sample):
            # Only accepted samples claim an id, so a rejected row cannot shadow a good one.
            if result.id in first_line:
                yield Reject(
                    path, line, result.id,
                    f"duplicate id {result.id!r} (first seen on line {first_line[result.id]})",
                )
                continue
            first_line[result.id] = line
        yield result


def _jsonl_rows(path: str) -> Iterator[tuple[int, Any] | Reject]:
    # Binary mode so that one undecodable byte costs only its own line.
    with open(path, "rb") as handle:
        for line, raw in enumerate(handle, start=1):
            if line == 1 and raw.startswith(BOM):
                raw = raw[len(BOM):]
            try:
                text = raw.decode("utf-8")
            except UnicodeDecodeError as error:
                yield Reject(path, line, None, f"invalid UTF-8 at byte {error.start}")
                continue
            if not text.strip():
                continue
            try:
                yield line, json.loads(text)
            except json.JSONDecodeError as error:
                yield Reject(path, line, None, f"invalid JSON: {error}")


def _parquet_rows(path: str) -> Iterator[tuple[int, Any] | Reject]:
    parquet = pq.ParquetFile(path)
    columns = parquet.schema_arrow.names
    if "messages" not in columns and not {"prompt", "completion"} <= set(columns):
        raise ValueError(
            f"{path}: needs a 'messages' column or 'prompt' and 'completion' columns; "
            f"it has {', '.join(columns) or 'no columns'}"
        )
    return _parquet_records(path, parquet)


def _parquet_records(path: str, parquet: pq.ParquetFile) -> Iterator[tuple[int, Any] | Reject]:
    line = 0
    for batch in parquet.iter_batches():
        for row in batch.to_pylist():
            line += 1
            try:
                yield line, _decode_json_text(_drop_nulls(row))
            except _BadRow as error:
                yield Reject(path, line, None, str(error))


def _drop_nulls(value: Any) -> Any:
    """Struct columns give every row every field; fields this row lacks come back as None."""
    if isinstance(value, dict):
        return {key: _drop_nulls(item) for key, item in value.items() if item is not None}
    if isinstance(value, list):
        return [_drop_nulls(item) for item in value]
    return value


def _decode_json_text(row: dict) -> dict:
    for column in JSON_TEXT_COLUMNS:
        if isinstance(row.get(column), str):
            try:
                row[column] = json.loads(row[column])
            except json.JSONDecodeError as error:
                raise _BadRow(f"{column} is text but not valid JSON: {error}") from None
    return row


def _parse_row(path: str, line: int, stem: str, row: Any, call_format: str) -> Sample | Reject:
    if not isinstance(row, dict):
        return Reject(path, line, None, f"row is {_kind(row)}, expected object")
    try:
        sample_id = _row_id(row.get("id"), stem, line)
    except _BadRow as error:
        return Reject(path, line, None, str(error))
    try:
        messages, shift = _with_tools(_messages(row, call_format, sample_id), row.get("tools"), call_format, sample_id)
        spans = _reasoning_spans(row.get("reasoning_spans"), messages, shift)
        meta = _answer_meta(row.get("answer"))
    except _BadRow as error:
        return Reject(path, line, sample_id, str(error))
    return Sample(sample_id, messages, f"{path}:{line}", reasoning_spans=spans, meta=meta)


def _answer_meta(value: Any) -> dict[str, str]:
    """An optional final answer (a number, as GSM8K's): the eval and critical stages check the
    model's answer against it, by its final number."""
    if value is None:
        return {}
    if isinstance(value, bool) or not isinstance(value, str | int | float):
        raise _BadRow(f"answer is {_kind(value)}, expected a number or a string holding one")
    number = normalize_number(str(value))
    if number is None:
        raise _BadRow(f"answer {value!r} is not a number")
    return {"answer": number}


def _row_id(value: Any, stem: str, line: int) -> str:
    if value is None:
        return f"{stem}-L{line}"
    if not isinstance(value, str):
        raise _BadRow(f"id is {_kind(value)}, expected string")
    if not value:
        raise _BadRow("id is empty")
    if len(value) > MAX_ID_CHARS:
        raise _BadRow(f"id is longer than {MAX_ID_CHARS} characters")
    if "/" in value or "\\" in value or ".." in value:
        raise _BadRow(f"id {value!r} contains a path separator or '..'")
    if any(unicodedata.category(char) == "Cc" for char in value):
        raise _BadRow(f"id {value!r} contains a control character")
    return value


def _messages(row: dict, call_format: str, sample_id: str) -> list[dict[str, str]]:
    raw = row.get("messages")
    if raw is None or raw == []:
        raw = _prompt_completion(row, "messages is empty" if raw == [] else "no messages")
    if not isinstance(raw, list):
        raise _BadRow(f"messages is {_kind(raw)}, expected list")
    messages = [_message(index, message, call_format, sample_id) for index, message in enumerate(raw)]
    if not any(message["role"] == "assistant" for message in messages):
        raise _BadRow("no assistant turn")
    return messages


def _prompt_completion(row: dict, missing: str) -> list[dict[str, Any]]:
    prompt, completion = row.get("prompt"), row.get("completion")
    if prompt is None and completion is None:
        raise _BadRow(f"{missing} and no prompt/completion")
    for field, value in (("prompt", prompt), ("completion", completion)):
        if value is None:
            raise _BadRow(f"{field} is missing")
        if not isinstance(value, str):
            raise _BadRow(f"{field} is {_kind(value)}, expected string")
    return [{"role": "user", "content": prompt}, {"role": "assistant", "content": completion}]


def _message(index: int, message: Any, call_format: str, sample_id: str) -> dict[str, str]:
    if not isinstance(message, dict):
        raise _BadRow(f"message {index} is {_kind(message)}, expected object")
    role = message.get("role")
    if role is None:
        raise _BadRow(f"message {index} has no role")
    if role not in ROLES:
        raise _BadRow(f"message {index} has unknown role {role!r} (expected one of {', '.join(ROLES)})")
    content = message.get("content")
    if role == "assistant":
        return {"role": role, "content": _assistant_text(index, content, message.get("tool_calls"), call_format,
                                                         sample_id)}
    if content is None:
        raise _BadRow(f"message {index} has no content")
    if not isinstance(content, str):
        raise _BadRow(f"message {index} content is {_kind(content)}, expected string")
    return {"role": role, "content": content}


def _assistant_text(index: int, content: Any, tool_calls: Any, call_format: str, sample_id: str) -> str:
    if content is not None and not isinstance(content, str):
        raise _BadRow(f"message {index} content is {_kind(content)}, expected string")
    text = content or ""
    calls = _tool_calls(index, tool_calls) if tool_calls else []
    if not calls:
        if not text.strip():
            raise _BadRow(f"message {index} (assistant) has empty content and no tool_calls")
        return text
    return assistant_text(text, calls, call_format, sample_id)


def _tool_calls(index: int, tool_calls: Any) -> list[tuple[str, dict]]:
    if not isinstance(tool_calls, list):
        raise _BadRow(f"message {index} tool_calls is {_kind(tool_calls)}, expected list")
    return [_tool_call(f"message {index} tool_call {number}", call)
            for number, call in enumerate(tool_calls)]


def _tool_call(where: str, call: Any) -> tuple[str, dict]:
    function = call.get("function") if isinstance(call, dict) else None
    if not isinstance(function, dict):
        raise _BadRow(f"{where} has no 'function' object")
    name = function.get("name")
    if not isinstance(name, str) or not name.strip():
        raise _BadRow(f"{where} has no function name")
    arguments = function.get("arguments")
    if isinstance(arguments, str):
        try:
            arguments = json.loads(arguments) if arguments.strip() else {}
        except json.JSONDecodeError:
            raise _BadRow(f"{where} arguments are not valid JSON") from None
    if arguments is None:
        arguments = {}
    if not isinstance(arguments, dict):
        raise _BadRow(f"{where} arguments are {_kind(arguments)}, expected object")
    return name, arguments


def _with_tools(messages: list[dict[str, str]], tools: Any, call_format: str,
                sample_id: str) -> tuple[list[dict[str, str]], int]:
    """Messages with the tool list in the system message, and how far indices moved (0 or 1)."""
    if tools is None or tools == []:
        return messages, 0
    has_system = messages[0]["role"] == "system"
    try:
        system = system_text(messages[0]["content"] if has_system else None, tools, call_format, sample_id)
    except ValueError as error:
        raise _BadRow(f"bad tools: {error}") from None
    if has_system:
        return [{"role": "system", "content": system}, *messages[1:]], 0
    return [{"role": "system", "content": system}, *messages], 1


def _reasoning_spans(
    raw: Any, messages: list[dict[str, str]], shift: int
) -> dict[int, list[tuple[int, int]]] | None:
    if raw is None:
        return None
    if not isinstance(raw, dict):
        raise _BadRow(f"reasoning_spans is {_kind(raw)}, expected object")
    spans = {}
    for key, value in raw.items():
        index = _span_index(key, len(messages) - shift)
        spans[index + shift] = _span_list(index, value, len(messages[index + shift]["content"]))
    return spans


def _span_index(key: Any, count: int) -> int:
    if isinstance(key, bool) or not (isinstance(key, int) or (isinstance(key, str) and key.isdigit())):
        raise _BadRow(f"reasoning_spans key {key!r} is not a message index")
    index = int(key)
    if index >= count:
        raise _BadRow(f"reasoning_spans key {key!r} is past the last message")
    return index


def _span_list(index: int, value: Any, length: int) -> list[tuple[int, int]]:
    where = f"reasoning_spans of message {index}"
    if not isinstance(value, list):
        raise _BadRow(f"{where} is {_kind(value)}, expected list")
    spans: list[tuple[int, int]] = []
    for span in value:
        if (not isinstance(span, list) or len(span) != 2
                or not all(isinstance(x, int) and not isinstance(x, bool) for x in span)):
            raise _BadRow(f"{where}: span {span!r} is not a pair of integers")
        start, end = span
        if not 0 <= start < end <= length:
            raise _BadRow(f"{where}: span {span!r} is empty or outside the content (length {length})")
        if spans and start < spans[-1][1]:
            raise _BadRow(f"{where}: span {span!r} overlaps or precedes the one before it")
        spans.append((start, end))
    return spans


def _kind(value: Any) -> str:
    return "null" if value is None else type(value).__name__
