"""Hypothesis strategies for the values LTtx carries."""

from __future__ import annotations

from typing import Any

from hypothesis import strategies as st

from lttx.wire.ext import KINDS, Encoded

#: DataFrames, series and arrays as the daemon holds them: opaque typed bytes.
encoded = st.builds(Encoded, st.sampled_from(sorted(KINDS.values())), st.binary(max_size=24))

scalars = (
    st.none()
    | st.booleans()
    | st.integers(min_value=-(2**63), max_value=2**64 - 1)
    | st.floats(allow_nan=False)
    | st.text(max_size=20)
    | st.binary(max_size=20)
    | encoded
)

dict_keys = st.text(max_size=8) | st.integers(-(2**63), 2**63 - 1) | st.binary(max_size=8)

values: st.SearchStrategy[Any] = st.recursive(
    scalars,
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(dict_keys, children, max_size=5),
    max_leaves=20,
)
