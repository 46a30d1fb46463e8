"""
Who may connect, and what each token may do.

One shared token (``--token``) may do everything.  A roles file
(``--token-file`` holding JSON, see :func:`parse_roles`) lists several tokens,
each with its rights: an action (``read``, ``write``, ``publish``,
``subscribe``, ``upload``, ``download``) on the names matching a glob pattern.
The authenticator turns the token of ``hello`` into a :class:`Grant`, which
the connection keeps and asks before each action.  Without any token the
daemon is in protected mode: loopback peers only, with every right.

The rights each request needs, for command and file connections, are the
tables :data:`COMMAND_RIGHTS` and :data:`FILE_COMMAND_RIGHTS`, checked by
:func:`authorize_command`; the daemon's dispatcher asks it before a handler
runs (docs/protocol.md, "Rights").
"""

from __future__ import annotations

import fnmatch
import hmac
import ipaddress
import json
from dataclasses import dataclass, field
from typing import Any, Callable, Mapping, NamedTuple, Optional, Sequence

from twisted.internet.interfaces import IAddress
from twisted.internet.address import IPv4Address, IPv6Address

from ..errors import PermissionDenied
from ..wire.excerpt import excerpt
from ..wire.names import check_file_name

#: What a right can allow.  ``read``/``write`` are about variables,
#: ``publish``/``subscribe`` about channels, ``upload``/``download`` about
#: files (listing files counts as ``download``, deleting one as ``upload``),
#: ``monitor`` about the daemon itself (the ``status`` request, the HTTP
#: status page, ``/status.json`` and ``/metrics``; it takes no pattern).
ACTIONS = ("read", "write", "publish", "subscribe", "upload", "download", "monitor")

#: The right that shows the daemon's whole status report, and nothing else.
MONITOR = "monitor"

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
            if action == MONITOR and pattern != "*":
                raise RolesError(f"{name}: {MONITOR} takes no pattern, in right {right!r}")
            for each in ACTIONS if action == ALL else (action,):
                if each == MONITOR and pattern != "*":
                    continue  # all:orders_* is about those names, not the whole daemon
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

    def names_exactly(self, action: str, resource: str) -> bool:
        """Whether a right names ``resource`` itself (``subscribe:hq_ticks``), not
        through a pattern with ``*``, ``?`` or ``[``."""
        return (resource in self.patterns.get(action, ())
                and not any(c in resource for c in "*?["))

    def rights(self) -> list[str]:
        """The rights as written in a roles file, ``ACTION:PATTERN`` each."""
        return [f"{action}:{pattern}" for action in ACTIONS
                for pattern in self.patterns.get(action, ())]


#: The grant of a connection that has not said hello yet.
NOTHING = Grant("unauthenticated")


class Right(NamedTuple):
    """The right one command needs of the connection's token."""

    #: One of :data:`ACTIONS`.
    action: str
    #: The index of the argument naming the variable, channel or file the
    #: action is on; None: the action on some name (the handler keeps to the
    #: allowed names, as ``keys`` and ``list`` do).
    argument: Optional[int] = None
    #: Checks that argument before the right is asked, so that a malformed
    #: name is a ``bad_request`` whatever the token (raises a BadRequest).
    check: Optional[Callable[[Any], object]] = None


#: The right each request of a command connection needs, checked before its
#: handler runs; ``None`` means nothing is checked here (``ping``, or a
#: handler that checks each name itself, as ``subscribe`` does).  A command
#: missing from the table is served only to tokens with every right.
COMMAND_RIGHTS: Mapping[str, Optional[Right]] = {
    "ping": None,
    "get": Right("read", 0),
    "exists": Right("read", 0),
    "keys": Right("read"),
    # A watch shows only the names the token may read (the change log filters).
    "watch": Right("read"),
    "unwatch": Right("read"),
    "get_dict_value": Right("read", 0),
    "get_list_value": Right("read", 0),
    "put": Right("write", 0),
    "delete": Right("write", 0),
    "dict_change": Right("write", 0),
    "list_append": Right("write", 0),
    "list_pop": Right("write", 0),
    "list_remove": Right("write", 0),
    "incr": Right("write", 0),
    "expire": Right("write", 0),
    "ttl": Right("read", 0),
    # The handlers check each channel of the list themselves.
    "subscribe": None,
    "unsubscribe": None,
    # The whole report: a monitor token sees every name in it.
    "status": Right(MONITOR),
    # An acknowledged publish: [channel, key, data].
    "publish": Right("publish", 0),
}

#: The same for a file connection (``hello`` with mode ``file``): listing
#: files counts as ``download``, deleting one as ``upload``.  ``upload_end``
#: and ``download_end`` finish a transfer whose start was checked.
FILE_COMMAND_RIGHTS: Mapping[str, Optional[Right]] = {
    "list": Right("download"),
    # The name is checked by the file service after the right, as it always was.
    "delete": Right("upload", 0),
    "partial": Right("upload", 0, check_file_name),
    "upload": Right("upload", 0, check_file_name),
    "upload_end": None,
    "download": Right("download", 0, check_file_name),
    "download_end": None,
    # Between the daemons of one Redis: a later upload replaced this one's copy.
    "superseded": Right("upload", 0, check_file_name),
}


def authorize(grant: Grant, action: str, resource: Any = None) -> None:
    """
    Check that ``grant`` allows ``action`` on the variable, channel or file
    named ``resource`` (None: on some name).

    :raises PermissionDenied: if it does not.
    """
    if not grant.allows(action, resource):
        what = "anything" if resource is None else excerpt(resource, 80)
        raise PermissionDenied(f"the token {grant.name!r} may not {action} {what}")


def authorize_command(grant: Grant, command: str, args: Sequence[Any],
                      rights: Mapping[str, Optional[Right]]) -> None:
    """
    Check the right that ``command`` with ``args`` (whose count is already
    checked) needs, as listed in ``rights``.

    :raises PermissionDenied: if ``grant`` does not give it.
    :raises BadRequest: if a :attr:`Right.check` refuses the name.
    """
    if grant.unlimited:
        return
    if command not in rights:
        raise PermissionDenied(
            f"the token {grant.name!r} may not use {command}: it needs every right")
    needs = rights[command]
    if needs is None:
        return
    if needs.action == MONITOR and not grant.allows(MONITOR):
        raise PermissionDenied(
            f"the token {grant.name!r} may not use {command}: it needs the {MONITOR} right")
    if needs.argument is None:
        authorize(grant, needs.action)
        return
    resource = args[needs.argument]
    if needs.check is not None:
        needs.check(resource)
    authorize(grant, needs.action, resource)


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


def parse_channel_passwords(text: str, source: str = "roles file") -> list[tuple[str, str]]:
    """
    The channel passwords a roles file fixes up front, ``(pattern, password)``
    in the file's order (the first matching pattern wins)::

        {"tokens": [...],
         "channels": {"hq_ticks": {"password": "..."}, "cb_*": {"password": "..."}}}

    A channel matching one has that password whoever subscribes first; no
    subscriber can set another.

    :raises RolesError: naming ``source`` and the entry at fault.
    """
    try:
        document = json.loads(text, object_pairs_hook=_no_duplicate_keys)
    except ValueError as e:
        raise RolesError(f"{source} is not valid JSON: {e}") from None
    channels = document.get("channels", {}) if isinstance(document, dict) else {}
    if not isinstance(channels, dict):
        raise RolesError(f'{source}: "channels" must be an object of pattern: {{"password"}}')
    fixed = []
    for pattern, entry in channels.items():
        where = f"{source}, channels {pattern!r}"
        if not pattern:
            raise RolesError(f"{where}: empty pattern")
        if not isinstance(entry, dict) or set(entry) != {"password"}:
            raise RolesError(f'{where}: must be an object with only "password"')
        password = entry["password"]
        if not isinstance(password, str) or not password:
            raise RolesError(f"{where}: password must be a non-empty string")
        fixed.append((pattern, password))
    return fixed


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
        #: Tokens of the other daemons on one Redis (add_daemon_token): their
        #: grants are file rights only; they do not lift protected mode.
        self._daemon_tokens: list[tuple[bytes, Grant]] = []

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
        if not isinstance(token, str):  # a token is text (bytes are not one)
            return None
        try:
            token = token.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no token has one
            return None
        found = None
        for secret, grant in self._roles + self._daemon_tokens:
            if hmac.compare_digest(token, secret) and found is None:
                found = grant
        return found

    def add_daemon_token(self, token: str, grant: Grant) -> None:
        """Let the other daemons of the Redis engine in with ``token`` and ``grant``
        (they fetch and delete this daemon's files for their clients)."""
        self._daemon_tokens.append((token.encode("utf-8"), grant))

    def check(self, token: object) -> bool:
        """Whether ``token`` opens the daemon."""
        return self.authenticate(token) is not None


def password_exemption(auth: "TokenAuthenticator",
                       grant: Grant) -> Optional[Callable[[str], bool]]:
    """
    Under a roles file, the channels whose password (set by another token)
    ``grant`` is not held to: every channel with ``all``, a channel a
    subscribe right names exactly (README, "Tokens with roles").  None
    without a roles file (one token: the first subscriber's password holds).
    The same on the native and the legacy port.
    """
    if not auth.named_tokens:
        return None
    return lambda name: grant.unlimited or grant.names_exactly("subscribe", name)
