"""Which field of a JSONL line (or column of a table) holds a document's text, and reading it from a line."""

from __future__ import annotations

import json

DEFAULT_TEXT_FIELDS = ("text", "content")


def text_fields(data_config) -> tuple[str, ...]:
    """The fields (JSONL) or columns (Parquet, Arrow) a document is read from: the default ``text`` falls back to
    ``content``; a field the user named is the only one read, and must exist."""
    field = str(data_config.text_field)
    return DEFAULT_TEXT_FIELDS if field == DEFAULT_TEXT_FIELDS[0] else (field,)


def check_named_field(path: str, lineno: int, line: bytes, fields: tuple[str, ...]) -> None:
    """Stops when the first JSON object of a file lacks a field the user named (not for the default fields)."""
    if fields == DEFAULT_TEXT_FIELDS:
        return
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError):
        return  # reported as a malformed line where it is read
    if isinstance(obj, dict) and fields[0] not in obj:
        raise ValueError(f"{path}:{lineno} has no field {fields[0]!r} (its fields are {sorted(obj)}); set "
                         "--config.data.text_field to the field holding the text.")


def jsonl_document(line: bytes, fields: tuple[str, ...]) -> tuple[bytes, str]:
    """A JSONL line -> (document bytes, '') or (b'', reason it is malformed)."""
    try:
        obj = json.loads(line)
    except (ValueError, UnicodeDecodeError) as e:
        return b"", f"bad JSON ({e})"
    if not isinstance(obj, dict):
        return b"", f"expected a JSON object, got {type(obj).__name__}"
    for field in fields:
        if field in obj:
            value = obj[field]
            if not isinstance(value, str):
                return b"", f"field {field!r} is {type(value).__name__}, not a string"
            return value.encode("utf-8", "surrogatepass"), ""
    return b"", f"none of the fields {list(fields)} is present"
