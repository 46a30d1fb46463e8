"""
What a variable, a channel or a file may be called: every name rule of the
protocol, in one place, applied the same by the daemon and the client.

- a variable name is any non-empty string;
- a channel name is 1 to :data:`MAX_CHANNEL_NAME` characters without ``@``
  (``"a@b"`` names two channels at once);
- a file name is a plain file name: no separator, no ``..``, no leading
  dot, no control character (C0, DEL, C1), no bidirectional-override or
  invisible formatting character (``U+202A``-``U+202E``, ``U+2066``-``U+2069``,
  ``U+200E``, ``U+200F``, ``U+061C``, ``U+FEFF``), at most
  :data:`MAX_FILE_NAME_BYTES` UTF-8 bytes; it is compared in Unicode NFC form,
  so ``café`` typed either way is one file.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ..errors import BadFileName, BadRequest
from .excerpt import excerpt

#: The longest channel name, in characters.
MAX_CHANNEL_NAME = 200
#: The longest file name, in UTF-8 bytes (NAME_MAX of common file systems).
MAX_FILE_NAME_BYTES = 255

#: Characters that reorder or hide what a name shows (Trojan Source, CVE-2021-42574),
#: refused in file names: bidi embeddings, overrides and isolates, bidi marks, the BOM.
_INVISIBLE = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069"
                       "\u200e\u200f\u061c\ufeff")


def check_variable_name(name: Any) -> str:
    """
    Return ``name`` if it can name a variable.

    :raises BadRequest: unless it is a non-empty str.
    """
    if not isinstance(name, str) or not name:
        raise BadRequest(f"a variable name must be a non-empty string, not {excerpt(name)}")
    return name


def check_channel(name: Any) -> str:
    """
    Return ``name`` if it can name one channel.

    :raises BadRequest: unless it is a str of 1 to 200 characters without ``@``.
    """
    if not isinstance(name, str):
        raise BadRequest(f"a channel name must be a str, not {type(name).__name__}")
    if not name or len(name) > MAX_CHANNEL_NAME or "@" in name:
        raise BadRequest(f"bad channel name {excerpt(name)}: 1 to {MAX_CHANNEL_NAME} "
                         "characters, no '@'")
    return name


def split_channels(channels: Any) -> list[str]:
    """
    ``"a@b"``, ``"a"`` or ``["a", "b@c"]`` -> ``["a", "b", "c"]`` (duplicates removed).

    :raises BadRequest: for an empty name, a name over 200 characters, or not a str.
    """
    if isinstance(channels, str):
        channels = [channels]
    if not isinstance(channels, (list, tuple)) or not channels:
        raise BadRequest("channels must be a name, 'a@b', or a non-empty list of names")
    names: dict[str, None] = {}
    for item in channels:
        if not isinstance(item, str):
            raise BadRequest(f"a channel name must be a str, not {type(item).__name__}")
        for name in item.split("@"):
            check_channel(name)
            names[name] = None
    return list(names)


def check_file_name(name: object) -> str:
    """
    Return ``name`` in Unicode NFC form if it is a plain file name, else refuse it.

    :raises BadFileName: for a non-string, an empty name, a path separator,
        ``..``, a leading dot, a control, bidirectional-override or invisible
        formatting character, or more than 255 UTF-8 bytes.
    """
    if not isinstance(name, str):
        raise BadFileName(f"a file name must be a string, not {type(name).__name__}")
    if not name:
        raise BadFileName("a file name must not be empty")
    shown = printable(name[:60])
    for char in name:
        if char == "\x00":
            raise BadFileName(f"file name {shown} holds a NUL")
        if _is_control(char):
            raise BadFileName(f"file name {shown} holds the control character "
                              f"U+{ord(char):04X}")
        if char in _INVISIBLE:
            raise BadFileName(f"file name {shown} holds the invisible formatting "
                              f"character U+{ord(char):04X}")
    if "/" in name or "\\" in name:
        raise BadFileName(f"file name {shown} holds a path separator")
    try:
        name = unicodedata.normalize("NFC", name)
        encoded = name.encode("utf-8")
    except UnicodeEncodeError:
        raise BadFileName(f"file name {shown} is not valid Unicode") from None
    if name == "..":
        raise BadFileName("file name '..' is not a file")
    if name.startswith("."):
        raise BadFileName(f"file name {shown} starts with a dot")
    if len(encoded) > MAX_FILE_NAME_BYTES:
        raise BadFileName(
            f"file name of {len(encoded)} bytes is longer than {MAX_FILE_NAME_BYTES} bytes")
    return name


def _is_control(char: str) -> bool:
    code = ord(char)
    return code < 0x20 or 0x7F <= code <= 0x9F


def printable(text: str) -> str:
    """
    ``text`` quoted, with every control, invisible or bidirectional formatting
    character escaped (``\\n``, ``\\x1b``, ``\\u202e``): safe to print in a
    terminal listing or a log line, where a raw one could forge a line or
    reorder what is shown.
    """
    return "'" + "".join(_escape(c) for c in text) + "'"


def _escape(char: str) -> str:
    if char == "'" or char == "\\":
        return "\\" + char
    if not char.isprintable() or char in _INVISIBLE or unicodedata.category(char) == "Cf":
        return char.encode("unicode_escape", "backslashreplace").decode("ascii")
    return char


__all__ = ["MAX_CHANNEL_NAME", "MAX_FILE_NAME_BYTES", "check_channel", "check_file_name",
           "check_variable_name", "printable", "split_channels"]
