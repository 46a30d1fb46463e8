"""
Who may connect, and what each token may do.

One shared token (``--token``) may do everything.  A roles file
(``--token-file`` holding JSON, see :func:`parse_roles`) lists several tokens,
each with its rights: an action (``read``, ``write``, ``publish``,
``subscribe``, ``upload``, ``download``) on the names matching a glob pattern.
The authenticator turns the token of ``hello`` into a :class:`Grant`, which
the connection keeps and asks before each action.  Without any token the
daemon is in protected mode: loopback peers only, with every right.
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Mapping, Optional, Sequence

from twisted.internet.interfaces import IAddress
from twisted.internet.address import IPv4Address, IPv6Address

#: What a right can allow.  ``read``/``write`` are about variables,
#: ``publish``/``subscribe`` about channels, ``upload``/``download`` about
#: files (listing files counts as ``download``, deleting one as ``upload``).
ACTIONS = ("read", "write", "publish", "subscribe", "upload", "download")

#: A right naming every action at once.
ALL = "all"


class RolesError(ValueError):
    """A roles file that cannot be used; the message says where and why."""


@dataclass(frozen=True)
class Grant:
    """
    What one token may do: for each action, the glob patterns (``*``, ``?``,
    ``[abc]``, matched case-sensitively) of the names it may do it to.
    """

    name: str
    patterns: Mapping[str, tuple[str, ...]] = field(default_factory=dict)

    @classmethod
    def everything(cls, name: str = "full access") -> "Grant":
        """The grant of the single ``--token``: every action on every name."""
        return cls(name, {action: ("*",) for action in ACTIONS})

    @classmethod
    def parse(cls, name: str, rights: Sequence[str]) -> "Grant":
        """
        A grant from rights written ``ACTION`` or ``ACTION:PATTERN``
        (``read``, ``write:orders_*``, ``all``); no pattern means ``*``.

        :raises RolesError: for an unknown action or an empty pattern.
        """
        patterns: dict[str, list[str]] = {}
        for right in rights:
            if not isinstance(right, str):
                raise RolesError(f"{name}: a right must be a string, not {right!r}")
            action, _, pattern = right.partition(":")
            if not _:
                pattern = "*"
            if action != ALL and action not in ACTIONS:
                raise RolesError(
                    f"{name}: unknown action {action!r} in right {right!r} "
                    f"(actions: {', '.join(ACTIONS)}, or {ALL})")
            if not pattern:
                raise RolesError(f"{name}: empty pattern in right {right!r}")
            for each in ACTIONS if action == ALL else (action,):
                patterns.setdefault(each, []).append(pattern)
        return cls(name, {action: tuple(p) for action, p in patterns.items()})

    #: Whether this grant allows every action on every name; computed once,
    #: as every request and publish asks.
    unlimited: bool = field(init=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "unlimited", all(
            "*" in self.patterns.get(action, ()) for action in ACTIONS))

    def allows(self, action: str, resource: Any = None) -> bool:
        """
        Whether ``action`` is allowed on the name ``resource``; with
        ``resource=None``, whether it is allowed on some name at all.
        """
        patterns = self.patterns.get(action, ())
        if resource is None:
            return bool(patterns)
        if not isinstance(resource, str):
            # Not a name (the handler refuses it): only "any name" covers it.
            return "*" in patterns
        return any(fnmatch.fnmatchcase(resource, pattern) for pattern in patterns)

    def rights(self) -> list[str]:
        """The rights as written in a roles file, ``ACTION:PATTERN`` each."""
        return [f"{action}:{pattern}" for action in ACTIONS
                for pattern in self.patterns.get(action, ())]


#: The grant of a connection that has not said hello yet.
NOTHING = Grant("unauthenticated")


def is_roles_file(text: str) -> bool:
    """Whether a ``--token-file``'s content is a roles file (JSON) rather than
    a single token on its first line: a roles file starts with ``{``."""
    return text.lstrip().startswith("{")


def parse_roles(text: str, source: str = "roles file") -> list[tuple[str, Grant]]:
    """
    The ``(token, grant)`` pairs of a roles file::

        {"tokens": [
            {"name": "admin",    "token": "...", "rights": ["all"]},
            {"name": "md-feed",  "token": "...", "rights": ["publish:hq_*"]},
            {"name": "strategy", "token": "...",
             "rights": ["read", "write:orders_*", "subscribe:hq_*", "download"]}
        ]}

    :raises RolesError: naming ``source`` and the entry at fault.
    """
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:
        raise RolesError(f"{source} is not valid JSON: {e}") from None
    entries = document.get("tokens") if isinstance(document, dict) else None
    if not isinstance(entries, list) or not entries:
        raise RolesError(f'{source} must be an object with a non-empty list "tokens"')
    roles: list[tuple[str, Grant]] = []
    names: set[str] = set()
    secrets: set[str] = set()
    for number, entry in enumerate(entries, 1):
        where = f"{source}, token #{number}"
        if not isinstance(entry, dict):
            raise RolesError(f"{where}: must be an object with token and rights")
        unknown = set(entry) - {"name", "token", "rights"}
        if unknown:
            raise RolesError(f"{where}: unknown field(s) {', '.join(sorted(unknown))}")
        name = entry.get("name", f"token #{number}")
        token = entry.get("token")
        rights = entry.get("rights")
        if not isinstance(name, str) or not name:
            raise RolesError(f"{where}: name must be a non-empty string")
        if not isinstance(token, str) or not token:
            raise RolesError(f"{where} ({name}): token must be a non-empty string")
        if not isinstance(rights, list):
            raise RolesError(f"{where} ({name}): rights must be a list of strings")
        if token in secrets:
            raise RolesError(f"{where} ({name}): the same token is listed twice")
        if name in names:
            raise RolesError(f"{where}: the name {name!r} is used twice")
        names.add(name)
        secrets.add(token)
        # Errors name the place in the file; the grant itself is named for logs.
        parsed = Grant.parse(f"{where} ({name})", rights)
        roles.append((token, Grant(name, parsed.patterns)))
    return roles


def _no_duplicate_keys(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    keys = [key for key, _ in pairs]
    for key in keys:
        if keys.count(key) > 1:
            raise ValueError(f"the key {key!r} appears twice in one object")
    return dict(pairs)


def is_loopback(address: IAddress) -> bool:
    """Whether a peer address is this machine's (loopback IP or a UNIX socket)."""
    if isinstance(address, (IPv4Address, IPv6Address)):
        host = address.host.split("%", 1)[0]
        try:
            ip = ipaddress.ip_address(host)
        except ValueError:
            return False
        if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
            ip = ip.ipv4_mapped
        return ip.is_loopback
    # UNIX sockets and in-memory test transports never leave the machine.
    return True


class TokenAuthenticator:
    """
    Turns the token of ``hello`` into the :class:`Grant` of that connection.

    With one token (``TokenAuthenticator("secret")``) that token may do
    everything; :meth:`from_roles` takes several tokens with their rights.
    Without a token the daemon is in protected mode, like Redis: it serves
    loopback peers only, and any token they present gets every right.
    """

    def __init__(self, token: Optional[str] = None,
                 roles: Optional[Sequence[tuple[str, Grant]]] = None) -> None:
        if roles is not None and token:
            raise ValueError("give a token or roles, not both")
        #: Whether the tokens come with roles (and so have names worth logging).
        self.named_tokens = roles is not None
        if roles is None:
            roles = [(token, Grant.everything())] if token else []
        self._roles = [(secret.encode("utf-8"), grant) for secret, grant in roles]

    @classmethod
    def from_roles(cls, roles: Sequence[tuple[str, Grant]]) -> "TokenAuthenticator":
        """An authenticator for several tokens, each with its grant."""
        return cls(None, roles)

    @property
    def protected_mode(self) -> bool:
        return not self._roles

    @property
    def token_count(self) -> int:
        """How many tokens open the daemon."""
        return len(self._roles)

    def allows_peer(self, address: IAddress) -> bool:
        """Whether a peer may even start to authenticate."""
        return not self.protected_mode or is_loopback(address)

    def authenticate(self, token: object) -> Optional[Grant]:
        """
        The grant of ``token``, or None if it opens nothing.  Every token is
        compared, in constant time, so timing tells nothing of which matched.
        """
        if self.protected_mode:
            return Grant.everything("protected mode")
        if isinstance(token, str):
            token = token.encode("utf-8")
        if not isinstance(token, bytes):
            return None
        found = None
        for secret, grant in self._roles:
            if hmac.compare_digest(token, secret) and found is None:
                found = grant
        return found

    def check(self, token: object) -> bool:
        """Whether ``token`` opens the daemon."""
        return self.authenticate(token) is not None
