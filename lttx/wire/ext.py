"""
The MessagePack extension types of the protocol: DataFrames, series and
arrays, and :class:`Encoded`, the opaque typed value that stands for one.

One extension type code per kind (``docs/protocol.md``, "Extension types"):

====  ====================  ====================================  ===================
code  kind                  data                                  extra to install
====  ====================  ====================================  ===================
1     ``pandas.DataFrame``  Arrow IPC stream (one table)          ``lttx[pandas]``
2     ``pandas.Series``     Arrow IPC stream (one column)         ``lttx[pandas]``
3     ``polars.DataFrame``  Arrow IPC stream (one table)          ``lttx[polars]``
4     ``polars.Series``     Arrow IPC stream (one column)         ``lttx[polars]``
5     ``numpy.ndarray``     header (dtype, shape), raw elements   ``lttx[numpy]``
====  ====================  ====================================  ===================

The daemon never looks inside: it decodes such a value to an
:class:`Encoded`, stores and forwards it, and encodes it back byte for byte.
The client turns the kinds it has the libraries for into the library's object
(:mod:`lttx.client.dataframes`) and hands the others to the user as an
:class:`Encoded`, which can be put back unchanged.  This module imports
neither pandas nor pyarrow nor numpy.
"""

from __future__ import annotations

from typing import Any, NoReturn

import msgpack

from ..errors import DecodeError, LTtxError, MissingDependency

PANDAS_DATAFRAME = 1
PANDAS_SERIES = 2
POLARS_DATAFRAME = 3
POLARS_SERIES = 4
NUMPY_NDARRAY = 5

#: Each extension type code and the kind it carries.
KINDS: dict[int, str] = {
    PANDAS_DATAFRAME: "pandas.DataFrame",
    PANDAS_SERIES: "pandas.Series",
    POLARS_DATAFRAME: "polars.DataFrame",
    POLARS_SERIES: "polars.Series",
    NUMPY_NDARRAY: "numpy.ndarray",
}
CODES: dict[str, int] = {kind: code for code, kind in KINDS.items()}

#: The extra that brings what a kind needs, for ``pip install 'lttx[...]'``.
EXTRAS: dict[int, str] = {
    PANDAS_DATAFRAME: "pandas",
    PANDAS_SERIES: "pandas",
    POLARS_DATAFRAME: "polars",
    POLARS_SERIES: "polars",
    NUMPY_NDARRAY: "numpy",
}


#: How a client's reason for a placeholder starts when a library is missing.
MISSING = "this Python lacks"


class Encoded:
    """
    A DataFrame, series or array as it travels: its kind and its encoded bytes.

    The daemon holds every such value as an ``Encoded``; a client without the
    library a kind needs receives one.  Putting it back (as a variable, a
    dict value, a list item, message data) sends the same bytes.  Anything
    else done with it (an attribute of the real object, ``len``, indexing,
    iteration) raises :class:`~lttx.errors.MissingDependency` naming the
    extra to install.

    :param kind: one of :data:`KINDS`' values, e.g. ``"pandas.DataFrame"``.
    :param data: the extension type's data, as ``docs/protocol.md`` describes.
    :param reason: why the client could not make the object (set by the
        client: a missing library, or bytes it could not read).
    """

    __slots__ = ("kind", "data", "reason")

    kind: str
    data: bytes
    reason: str

    def __init__(self, kind: str, data: bytes, reason: str = "") -> None:
        if kind not in CODES:
            raise ValueError(f"unknown kind {kind!r}; known: {', '.join(CODES)}")
        object.__setattr__(self, "kind", kind)
        object.__setattr__(self, "data", bytes(data) if type(data) is not bytes else data)
        object.__setattr__(self, "reason", reason)

    @property
    def code(self) -> int:
        """The MessagePack extension type code."""
        return CODES[self.kind]

    def __setattr__(self, name: str, value: Any) -> NoReturn:
        raise AttributeError("an Encoded value is immutable")

    def __eq__(self, other: object) -> bool:
        if type(other) is not Encoded:
            return NotImplemented
        return self.kind == other.kind and self.data == other.data

    def __hash__(self) -> int:
        return hash((self.kind, self.data))

    def __repr__(self) -> str:
        return f"Encoded({self.kind!r}, <{len(self.data)} bytes>)"

    def __reduce__(self) -> Any:
        return (Encoded, (self.kind, self.data, self.reason))

    def unusable(self) -> LTtxError:
        """The error that any use of this placeholder raises."""
        extra = EXTRAS[self.code]
        if self.reason and not self.reason.startswith(MISSING):
            return DecodeError(f"this value is a {self.kind} ({len(self.data)} bytes) "
                               f"whose bytes cannot be read: {self.reason}")
        reason = self.reason or f"{MISSING} {self.kind.split('.')[0]}"
        return MissingDependency(
            f"this value is a {self.kind} ({len(self.data)} bytes) that this client "
            f"cannot read: {reason}; install it with: pip install 'lttx[{extra}]'")

    def __getattr__(self, name: str) -> NoReturn:
        # Only names not found normally land here: kind, data, reason and
        # code still work; the DataFrame's own attributes do not.
        if name.startswith("_"):
            # copy, pickle, printers (IPython's and hypothesis's _repr_pretty_)
            # and friends probe for these: "not there", not "install pandas".
            raise AttributeError(name)
        raise self.unusable()

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise self.unusable()

    __len__ = __iter__ = __getitem__ = __setitem__ = __contains__ = _refuse
    __array__ = __arrow_c_stream__ = __dataframe__ = _refuse
    __add__ = __sub__ = __mul__ = __truediv__ = __lt__ = __le__ = __gt__ = __ge__ = _refuse

    def __bool__(self) -> bool:
        return True


def to_ext(value: Encoded) -> msgpack.ExtType:
    """The MessagePack extension type that carries ``value``."""
    return msgpack.ExtType(CODES[value.kind], value.data)


def from_ext(code: int, data: bytes) -> Encoded:
    """
    The :class:`Encoded` value of one extension type.

    :raises KeyError: for a code that is not one of :data:`KINDS`.
    """
    return Encoded(KINDS[code], data)


__all__ = ["CODES", "EXTRAS", "Encoded", "KINDS", "NUMPY_NDARRAY", "PANDAS_DATAFRAME",
           "PANDAS_SERIES", "POLARS_DATAFRAME", "POLARS_SERIES", "from_ext", "to_ext"]
