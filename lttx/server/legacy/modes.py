"""
The legacy port's modes by ``con_type``: what :class:`~.handshake.LegacyProtocol`
builds for each original connection type.
"""

from __future__ import annotations

from typing import Any, Callable

from .file_mode import FileMode
from .handshake import LegacyProtocol, Mode
from .plus_mode import PlusMode
from .push_mode import PushMode
from .put_mode import PutMode

#: ``con_type`` -> its mode.  (The original's ``check_version`` asked its
#: author's server for updates: it is not served.)
MODES: dict[str, Callable[[LegacyProtocol, dict[str, Any]], Mode]] = {
    "put_mode": PutMode,
    "push_mode": PushMode,
    "plus_mode": PlusMode,
    "file_mode": FileMode,
}
