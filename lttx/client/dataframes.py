"""
DataFrames, series and arrays as values: the client's side of the extension
types of :mod:`lttx.wire.ext`, never pickled.

- pandas ``DataFrame`` and ``Series``: an Arrow IPC stream written by pyarrow,
  with pandas' own schema metadata, so dtypes, the index (named, multi-level),
  column names and order, time zones, categoricals, nullable dtypes and
  strings come back as they were;
- polars ``DataFrame`` and ``Series``: an Arrow IPC stream written by polars
  itself (no pyarrow needed), at Arrow's oldest compatibility level so that
  any Arrow reader can read it;
- numpy ``ndarray``: a small header (dtype, shape) and the raw elements in C
  order; no pyarrow needed.

:func:`default` and :func:`ext_hook` are what the client passes to
:func:`lttx.wire.codec.encode` and :func:`~lttx.wire.codec.decode`.  The
libraries are imported the first time a value needs them, never at import
time: a client that carries no DataFrame does not load pandas.  A kind whose
library is missing (or whose bytes cannot be read) is received as an
:class:`~lttx.wire.ext.Encoded` placeholder, which can be put back unchanged.
"""

from __future__ import annotations

import functools
import struct
from typing import Any, Callable, Optional

import msgpack

from ..errors import BadRequest, EncodeError
from ..wire.ext import (
    CODES,
    KINDS,
    MISSING,
    NUMPY_NDARRAY,
    PANDAS_DATAFRAME,
    PANDAS_SERIES,
    POLARS_DATAFRAME,
    POLARS_SERIES,
    Encoded,
    to_ext,
)

#: The first byte of an ndarray's data: the version of its header layout.
NDARRAY_VERSION = 1
#: The numpy dtype kinds an ndarray may have: bool, ints, floats, complex,
#: datetime64, timedelta64, bytes and text.  Never "O" (pointers) or "V".
NDARRAY_KINDS = frozenset("biufcmMSU")
_U64 = struct.Struct(">Q")
#: Schema metadata key of a pandas Series sent as a one-column table.
_SERIES_KEY = b"lttx.series"
#: Schema metadata key of the frequency of a datetime or timedelta index.
_FREQ_KEY = b"lttx.freq"


@functools.lru_cache(maxsize=None)
def _load(*modules: str) -> tuple[Any, ...]:
    """The modules, imported once; ImportError (cached) if one is missing."""
    import importlib

    return tuple(importlib.import_module(m) for m in modules)


def _library(code: int) -> tuple[Any, ...]:
    """The modules a kind needs; ImportError if one is missing."""
    try:
        if code in (PANDAS_DATAFRAME, PANDAS_SERIES):
            return _load("pandas", "pyarrow")
        if code in (POLARS_DATAFRAME, POLARS_SERIES):
            return _load("polars")
        return _load("numpy")
    except ImportError:
        _load.cache_clear()  # installed later in the same process: try again then
        raise


def _need(code: int) -> tuple[Any, ...]:
    """The modules a kind needs; MissingDependency naming the extra if one is missing."""
    try:
        return _library(code)
    except ImportError as e:
        raise Encoded(KINDS[code], b"", f"{MISSING} {e.name or 'a library'}").unusable() from None


# -- encoding ---------------------------------------------------------------


def default(value: Any) -> Any:
    """
    msgpack's ``default`` for the client: a DataFrame, series, array or
    :class:`Encoded` as its extension type.

    :raises EncodeError: for a frame with a column Arrow cannot carry, or an
        array of object or structured dtype (never pickled).
    :raises TypeError: for any other type (the codec says it cannot encode it).
    """
    kind = type(value)
    if kind is Encoded:
        return to_ext(value)
    module = kind.__module__.partition(".")[0]
    name = kind.__name__
    if module == "pandas" and name in ("DataFrame", "Series"):
        return _pandas_ext(value, name == "Series")
    if module == "polars" and name in ("DataFrame", "Series"):
        return _polars_ext(value, name == "Series")
    if module == "numpy" and name == "ndarray":
        return msgpack.ExtType(NUMPY_NDARRAY, ndarray_bytes(value))
    raise TypeError(f"can not serialize {name!r} object")


def _pandas_ext(value: Any, series: bool) -> msgpack.ExtType:
    pd, pa = _need(PANDAS_DATAFRAME)  # pandas is there: pyarrow may not be
    frame = value.to_frame(name="_") if series else value
    try:
        table = pa.Table.from_pandas(frame, preserve_index=None)
    except (pa.ArrowException, TypeError, ValueError) as e:
        column = _unencodable_column(pa, frame)
        what = f"column {column!r}" if column is not None else "a column or the index"
        raise EncodeError(
            f"cannot encode the {'Series' if series else 'DataFrame'}: {what} holds "
            f"values Arrow cannot carry ({_first_line(e)}); LTtx never pickles: convert "
            "it to a supported type (numbers, str, bytes, datetime, Decimal)") from None
    # Beside pandas' own metadata: what it does not keep.
    meta = dict(table.schema.metadata or {})
    if series:  # the name (None included) and its type
        meta[_SERIES_KEY] = msgpack.packb(value.name) if _plain(value.name) else b"\xc0"
    freq = getattr(frame.index, "freqstr", None)
    if freq is not None and isinstance(frame.index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        meta[_FREQ_KEY] = freq.encode()  # a regular index's frequency ("s", "B", ...)
    if len(meta) != len(table.schema.metadata or {}):
        table = table.replace_schema_metadata(meta)
    code = PANDAS_SERIES if series else PANDAS_DATAFRAME
    return msgpack.ExtType(code, _ipc_stream(pa, table))


def _plain(name: Any) -> bool:
    return name is None or type(name) in (str, int, float, bool)


def _ipc_stream(pa: Any, table: Any) -> bytes:
    sink = pa.BufferOutputStream()
    with pa.ipc.new_stream(sink, table.schema) as writer:
        writer.write_table(table)
    # msgpack's ExtType holds bytes: the one copy out of Arrow's buffer.
    return sink.getvalue().to_pybytes()  # type: ignore[no-any-return]


def _unencodable_column(pa: Any, frame: Any) -> Optional[Any]:
    """The first column Arrow refuses, to name it (only on the error path)."""
    for i, column in enumerate(frame.columns):
        try:
            pa.array(frame.iloc[:, i], from_pandas=True)
        except (pa.ArrowException, TypeError, ValueError):
            return column
    return None


def _first_line(error: BaseException) -> str:
    # Arrow's errors hold several strings in args: the first says what went wrong.
    text = error.args[0] if error.args and isinstance(error.args[0], str) else str(error)
    return (text.splitlines() or [error.__class__.__name__])[0][:200]


def _polars_ext(value: Any, series: bool) -> msgpack.ExtType:
    (pl,) = _need(POLARS_DATAFRAME)
    frame = value.to_frame() if series else value
    try:
        stream = frame.write_ipc_stream(None, compat_level=pl.CompatLevel.oldest())
    except Exception as e:  # polars raises its own many kinds (ComputeError, ...)
        raise EncodeError(f"cannot encode the polars {'Series' if series else 'DataFrame'}: "
                          f"{_first_line(e)}") from None
    return msgpack.ExtType(POLARS_SERIES if series else POLARS_DATAFRAME, stream.getvalue())


def ndarray_bytes(array: Any) -> bytes:
    """
    The extension data of a numpy array: version, dtype, shape, elements.

    :raises EncodeError: for an object, structured or sub-array dtype.
    """
    (np,) = _need(NUMPY_NDARRAY)
    dtype = array.dtype
    if dtype.kind not in NDARRAY_KINDS or dtype.fields is not None or dtype.subdtype:
        raise EncodeError(
            f"cannot encode a numpy array of dtype {dtype}: only bool, integer, float, "
            "complex, datetime64, timedelta64, bytes and str arrays travel (never pickled)")
    descr = dtype.str.encode("ascii")
    if array.ndim > 64:
        raise EncodeError(f"cannot encode a numpy array of {array.ndim} dimensions")
    head = bytes([NDARRAY_VERSION, len(descr)]) + descr + bytes([array.ndim]) + b"".join(
        _U64.pack(n) for n in array.shape)
    # A C-contiguous array is read in place; any other is copied into C order.
    flat = np.ascontiguousarray(array).reshape(-1).view(np.uint8)
    return head + memoryview(flat)


# -- decoding ---------------------------------------------------------------


def ext_hook(code: int, data: bytes) -> Any:
    """
    msgpack's ``ext_hook`` for the client: the library object of an
    extension type, or an :class:`Encoded` if the library is missing or the
    bytes cannot be read.

    :raises BadRequest: for a code that is not part of the protocol.
    """
    kind = KINDS.get(code)
    if kind is None:
        raise BadRequest(f"MessagePack extension type {code} is not part of the protocol")
    try:
        modules = _library(code)
    except ImportError as e:
        return Encoded(kind, data, f"{MISSING} {e.name or 'a library it needs'}")
    try:
        return _READERS[code](modules, data)
    except Exception as e:  # a bad sender: keep the bytes, say why on use
        return Encoded(kind, data, _first_line(e) or e.__class__.__name__)


def _read_table(pa: Any, data: bytes) -> Any:
    # pa.py_buffer wraps the bytes without a copy; Arrow reads them in place.
    with pa.ipc.open_stream(pa.py_buffer(data)) as reader:
        return reader.read_all()


def _pandas_frame(modules: tuple[Any, ...], data: bytes) -> Any:
    pd, pa = modules
    table = _read_table(pa, data)
    return _with_freq(pd, table, table.to_pandas())


def _with_freq(pd: Any, table: Any, frame: Any) -> Any:
    freq = (table.schema.metadata or {}).get(_FREQ_KEY)
    index = frame.index
    if freq is not None and isinstance(index, (pd.DatetimeIndex, pd.TimedeltaIndex)):
        frame.index = type(index)(index, freq=freq.decode())
    return frame


def _pandas_series(modules: tuple[Any, ...], data: bytes) -> Any:
    pd, pa = modules
    table = _read_table(pa, data)
    frame = _with_freq(pd, table, table.to_pandas())
    series = frame.iloc[:, 0]
    packed = (table.schema.metadata or {}).get(_SERIES_KEY)
    series.name = msgpack.unpackb(packed) if packed is not None else series.name
    return series


def _polars_frame(modules: tuple[Any, ...], data: bytes) -> Any:
    (pl,) = modules
    return pl.read_ipc_stream(data)


def _polars_series(modules: tuple[Any, ...], data: bytes) -> Any:
    (pl,) = modules
    return pl.read_ipc_stream(data).to_series(0)


def read_ndarray(modules: tuple[Any, ...], data: bytes) -> Any:
    """
    The numpy array of an extension's data, read-only over the received bytes
    (no copy; ``.copy()`` gives a writable one).

    :raises ValueError: if the data is not a well-formed array.
    """
    (np,) = modules
    if len(data) < 3 or data[0] != NDARRAY_VERSION:
        raise ValueError(f"not an ndarray of header version {NDARRAY_VERSION}")
    n = data[1]
    descr = bytes(data[2:2 + n]).decode("ascii")
    dtype = np.dtype(descr)
    if dtype.str != descr or dtype.kind not in NDARRAY_KINDS or dtype.fields is not None:
        raise ValueError(f"an ndarray dtype LTtx does not carry: {descr!r}")
    ndim = data[2 + n]
    start = 3 + n + 8 * ndim
    if len(data) < start:
        raise ValueError("an ndarray header cut short")
    shape = tuple(_U64.unpack_from(data, 3 + n + 8 * i)[0] for i in range(ndim))
    count = 1
    for size in shape:
        count *= size
    if len(data) - start != count * dtype.itemsize:
        raise ValueError(f"an ndarray of shape {shape} and dtype {descr} needs "
                         f"{count * dtype.itemsize} bytes, not {len(data) - start}")
    return np.frombuffer(data, dtype=dtype, count=count, offset=start).reshape(shape)


_READERS: dict[int, Callable[[tuple[Any, ...], bytes], Any]] = {
    PANDAS_DATAFRAME: _pandas_frame,
    PANDAS_SERIES: _pandas_series,
    POLARS_DATAFRAME: _polars_frame,
    POLARS_SERIES: _polars_series,
    NUMPY_NDARRAY: read_ndarray,
}


# -- for the command line ---------------------------------------------------


def is_frame(value: Any) -> bool:
    """Whether ``value`` is a DataFrame, series or array (or its placeholder)."""
    kind = type(value)
    return kind is Encoded or f"{kind.__module__.partition('.')[0]}.{kind.__name__}" in CODES


def frame_text(value: Any, csv: bool, terminal: bool) -> str:
    """
    A DataFrame, series or array as people read it: a table (cut to what a
    terminal shows when ``terminal``), or CSV with ``csv``.

    :raises MissingDependency: for a placeholder (the library is missing).
    """
    if type(value) is Encoded:
        raise value.unusable()
    module = type(value).__module__.partition(".")[0]
    if module == "numpy":
        if csv:
            (np,) = _need(NUMPY_NDARRAY)
            import io

            out = io.StringIO()
            np.savetxt(out, value if value.ndim else value.reshape(1), delimiter=",", fmt="%s")
            return out.getvalue().rstrip("\n")
        return str(value)
    if csv:
        text = value.to_csv() if module == "pandas" else value.write_csv()
        return str(text).rstrip("\n")
    if module == "pandas":
        return str(value) if terminal else str(value.to_string())
    return str(value)  # polars: its own table, cut to its configured rows


def read_csv(path: str) -> Any:
    """A CSV file (``-``: standard input) as a pandas DataFrame, its dtypes inferred."""
    pd, _ = _need(PANDAS_DATAFRAME)
    import sys

    return pd.read_csv(sys.stdin if path == "-" else path)


def ext_json(value: Any) -> dict[str, Any]:
    """
    A DataFrame, series or array inside a JSON value (``lttx get``):
    ``{"$ext": [kind, base64]}``, its encoded bytes, stored unchanged by
    ``lttx put``.

    :raises TypeError: for a value that is none of these.
    """
    import base64

    ext = default(value)
    return {"$ext": [KINDS[ext.code], base64.b64encode(ext.data).decode("ascii")]}


def from_ext_json(pair: Any) -> Encoded:
    """
    The value of ``{"$ext": [kind, base64]}``, as an :class:`Encoded`.

    :raises ValueError: if ``pair`` is not a known kind and base64 data.
    """
    import base64
    import binascii

    if (not isinstance(pair, list) or len(pair) != 2 or pair[0] not in CODES
            or not isinstance(pair[1], str)):
        raise ValueError(f'"$ext" must hold [kind, base64], a kind among {", ".join(CODES)}')
    try:
        return Encoded(pair[0], base64.b64decode(pair[1], validate=True))
    except binascii.Error as e:
        raise ValueError(f'"$ext" data is not valid base64: {e}') from None


__all__ = ["NDARRAY_VERSION", "default", "ext_hook", "ext_json", "frame_text", "from_ext_json",
           "is_frame", "ndarray_bytes", "read_csv", "read_ndarray"]
