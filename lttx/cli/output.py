"""
What the ``lttx`` command prints, and how it reads values: JSON lines with
bytes as ``{"$bytes": base64}``, names and values escaped so nothing the
daemon holds can forge a line or reorder the terminal, and the status report
as text.  Plain functions: no connection, no argument parsing.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import unicodedata
from typing import Any

from ..wire.names import printable


class UsageError(Exception):
    """Bad arguments or environment, found after parsing."""


def to_json(value: Any) -> Any:
    """A stored value as plain JSON data (see the module docstring)."""
    if isinstance(value, bytes):
        return {"$bytes": base64.b64encode(value).decode("ascii")}
    if isinstance(value, dict):
        plain = all(isinstance(k, str) for k in value) and not (
            len(value) == 1 and next(iter(value)) in ("$bytes", "$map", "$ext"))
        if plain:
            return {k: to_json(v) for k, v in value.items()}
        return {"$map": [[to_json(k), to_json(v)] for k, v in value.items()]}
    if isinstance(value, (list, tuple)):
        return [to_json(v) for v in value]
    if value is None or isinstance(value, (str, int, float)):
        return value
    from ..client.dataframes import ext_json

    return ext_json(value)  # a DataFrame, series or array (TypeError for others)


def from_json(data: Any) -> Any:
    """Plain JSON data (as :func:`to_json` writes it) back to a value."""
    if isinstance(data, dict):
        if len(data) == 1 and "$bytes" in data:
            encoded = data["$bytes"]
            if not isinstance(encoded, str):
                raise UsageError('"$bytes" must hold a base64 string')
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error as e:
                raise UsageError(f'"$bytes" is not valid base64: {e}') from None
        if len(data) == 1 and "$map" in data:
            pairs = data["$map"]
            if not isinstance(pairs, list) or not all(
                    isinstance(p, list) and len(p) == 2 for p in pairs):
                raise UsageError('"$map" must hold a list of [key, value] pairs')
            try:
                return {from_json(k): from_json(v) for k, v in pairs}
            except TypeError:
                raise UsageError('a "$map" key must be a string, number, bool, null '
                                 'or bytes') from None
        if len(data) == 1 and "$ext" in data:
            from ..client.dataframes import from_ext_json

            try:
                return from_ext_json(data["$ext"])
            except ValueError as e:
                raise UsageError(str(e)) from None
        return {k: from_json(v) for k, v in data.items()}
    if isinstance(data, list):
        return [from_json(v) for v in data]
    return data


def dumps(value: Any) -> str:
    """
    One line of JSON for a value; non-ASCII text stays readable, but control,
    invisible and bidirectional formatting characters are escaped (``\\u202e``),
    so a value cannot forge a line or reorder what the terminal shows.
    """
    return escape_formatting(json.dumps(to_json(value), ensure_ascii=False))


def escape_formatting(text: str) -> str:
    # json.dumps already escapes C0 controls; C1, Cf (bidi, BOM, zero-width)
    # and line/paragraph separators pass through raw unless escaped here.
    if text.isascii():
        return text
    return "".join(c if not _formatting(c) else _json_escape(c) for c in text)


def _formatting(char: str) -> bool:
    return not char.isascii() and (unicodedata.category(char) in ("Cc", "Cf", "Zl", "Zp"))


def _json_escape(char: str) -> str:
    code = ord(char)
    if code < 0x10000:
        return f"\\u{code:04x}"
    code -= 0x10000  # astral: a surrogate pair, as JSON spells it
    return f"\\u{0xD800 + (code >> 10):04x}\\u{0xDC00 + (code & 0x3FF):04x}"


def shown_name(name: str) -> str:
    """A name from the daemon as a terminal line shows it: as it is when it is
    plain, else quoted with its control and formatting characters escaped."""
    if name.isprintable() and not any(_formatting(c) for c in name):
        return name
    return printable(name)


def parse_json_argument(text: str, what: str) -> Any:
    try:
        return from_json(json.loads(text))
    except json.JSONDecodeError as e:
        raise UsageError(f"{what} is not valid JSON ({e}); "
                         f"quote a string as '\"text\"'") from None


# -- status, for people -------------------------------------------------------


def _size(n: Any) -> str:
    if not isinstance(n, int) or isinstance(n, bool):
        return str(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(n) < 1024 or unit == "TiB":
            return f"{n} B" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024  # type: ignore[assignment]
    return str(n)  # not reached


def _duration(seconds: Any) -> str:
    if not isinstance(seconds, (int, float)) or math.isnan(seconds):
        return str(seconds)
    s = int(seconds)
    days, s = divmod(s, 86400)
    hours, s = divmod(s, 3600)
    minutes, s = divmod(s, 60)
    parts = [f"{days}d"] if days else []
    if days or hours:
        parts.append(f"{hours}h")
    if days or hours or minutes:
        parts.append(f"{minutes}m")
    parts.append(f"{s}s")
    return " ".join(parts)


def _cell(key: str, value: Any) -> str:
    """One figure, shown as people read it: sizes in KiB/MiB, rates per second."""
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    lowered = key.lower()
    if "bytes" in lowered or lowered in ("size", "buffered", "queued"):
        return _size(value)
    if "rate" in lowered or lowered.endswith("_per_s"):
        return f"{value:.1f}/s" if isinstance(value, (int, float)) else str(value)
    if lowered in ("uptime", "age") or lowered.endswith("_seconds"):
        return _duration(value)
    if isinstance(value, float):
        return f"{value:.3f}".rstrip("0").rstrip(".")
    if isinstance(value, (list, dict)):
        return json.dumps(to_json(value), ensure_ascii=False) if value else "none"
    return str(value)


def _label(key: str) -> str:
    return key.replace("_", " ")


def _table(rows: list[tuple[str, dict[str, Any]]], first: str, indent: str) -> list[str]:
    columns: list[str] = []
    for _, row in rows:
        for key in row:
            if key not in columns:
                columns.append(key)
    header = [first] + [_label(c) for c in columns]
    body = [[name] + [_cell(c, row.get(c)) for c in columns] for name, row in rows]
    widths = [max(len(r[i]) for r in [header] + body) for i in range(len(header))]

    def line(cells: list[str]) -> str:
        # Names left-aligned, figures right-aligned, as in `ps` or `df`.
        out = [cells[0].ljust(widths[0])]
        out += [c.rjust(w) for c, w in zip(cells[1:], widths[1:])]
        return (indent + "  ".join(out)).rstrip()

    return [line(header)] + [line(r) for r in body]


def _section(value: Any, indent: str, name: str = "") -> list[str]:
    """Lines for one part of the status report, whatever its shape."""
    if isinstance(value, dict):
        if value and all(isinstance(v, dict) for v in value.values()):
            return _table([(str(k), v) for k, v in value.items()], name or "name", indent)
        lines: list[str] = []
        for k, v in value.items():
            if isinstance(v, (dict, list)) and v:
                if str(k) == name or _singular(str(k)) == name:
                    # channels: {channels: {...}} reads as one table, not two headings.
                    lines.extend(_section(v, indent, name=name))
                else:
                    lines.append(f"{indent}{_label(str(k))}:")
                    lines.extend(_section(v, indent + "  ", name=_singular(str(k))))
        scalars = [(k, v) for k, v in value.items() if not isinstance(v, (dict, list))
                   or not v]
        width = max((len(_label(str(k))) for k, _ in scalars), default=0)
        for k, v in scalars:
            lines.append(f"{indent}{_label(str(k)).ljust(width)}  {_cell(str(k), v)}")
        return lines
    if isinstance(value, list):
        if value and all(isinstance(v, dict) for v in value):
            first_key = next(iter(value[0]), "name")
            return _table([(str(v.get(first_key, "")),
                            {k: x for k, x in v.items() if k != first_key}) for v in value],
                          _label(first_key), indent)
        return [f"{indent}{_cell('', v)}" for v in value]
    return [f"{indent}{_cell(name, value)}"]


def _singular(name: str) -> str:
    return name[:-1] if name.endswith("s") and len(name) > 1 else name


def render_status(status: dict[str, Any], where: str) -> str:
    """The human form of a status report (``lttx status`` without ``--json``)."""
    status = dict(status)
    version = status.pop("version", "?")
    uptime = status.pop("uptime", None)
    up = "" if uptime is None else f", up {_duration(uptime)}"
    lines = [f"LTtx {version} at {where}{up}"]
    own = [(k, status.pop(k)) for k in ("connections", "variables") if k in status]
    components = [(k, v) for k, v in status.items() if isinstance(v, (dict, list))]
    others = [(k, v) for k, v in status.items() if not isinstance(v, (dict, list))]
    width = max((len(_label(k)) for k, _ in own + others), default=0)
    for k, v in own + others:
        lines.append(f"{_label(k).ljust(width)}  {_cell(k, v)}")
    for k, v in components:
        lines.append("")
        lines.append(f"{_label(k)}:")
        body = _section(v, "  ", name=_singular(k))
        lines.extend(body or ["  (none)"])
    return "\n".join(lines)


# -- the commands -------------------------------------------------------------
