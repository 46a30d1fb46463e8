"""
Who may see the daemon's HTTP pages: :class:`Gate` and its :class:`Sessions`.

The rules mirror the native port's.  Without a token (protected mode) the
daemon serves loopback clients only, with every right.  With tokens, a
request is let in by

- ``Authorization: Bearer TOKEN`` (scripts, Prometheus), or
- the session cookie a person gets by opening ``/?token=TOKEN`` once, or by
  the ``/login`` form: a random id, ``HttpOnly``, ``SameSite=Strict``,
  ``Secure`` over TLS, naming a row of a server-side table with an expiry.

The token's grant must have the ``monitor`` right (``lttx.state.auth``): a
monitor token sees the whole status report; any other token is refused with
403.  No credentials, a wrong token or an expired session: 401.
``/healthz`` asks for nothing.  Tokens are compared by the daemon's
authenticator (constant time); a session id is looked up in a dict.
"""

from __future__ import annotations

import secrets
from typing import Callable, Optional

from twisted.web.iweb import IRequest

from ..state.auth import MONITOR, Grant, TokenAuthenticator, is_loopback

#: The session cookie's name.
COOKIE = b"lttx_session"
#: Seconds a login lasts.
SESSION_LIFETIME = 12 * 3600.0
#: The most sessions kept; past it the oldest is forgotten.
MAX_SESSIONS = 10_000


class Refused(Exception):
    """A request that may not see a page: the HTTP code and why."""

    def __init__(self, code: int, reason: str) -> None:
        super().__init__(reason)
        self.code = code
        self.reason = reason


class Sessions:
    """
    The logged-in browsers: session id -> (grant, expiry).

    :param clock: the time now, in seconds.
    :param lifetime: seconds a session lasts from its login.
    :param limit: the most sessions kept.
    """

    def __init__(self, clock: Callable[[], float], lifetime: float = SESSION_LIFETIME,
                 limit: int = MAX_SESSIONS) -> None:
        self._clock = clock
        self.lifetime = lifetime
        self._limit = limit
        self._sessions: dict[str, tuple[Grant, float]] = {}  # insertion order: oldest first

    def __len__(self) -> int:
        return len(self._sessions)

    def open(self, grant: Grant) -> str:
        """A new session for ``grant``; its id (the cookie's value)."""
        now = self._clock()
        for key in [k for k, (_, expiry) in self._sessions.items() if expiry <= now]:
            del self._sessions[key]
        while len(self._sessions) >= self._limit:
            del self._sessions[next(iter(self._sessions))]
        session = secrets.token_urlsafe(32)
        self._sessions[session] = (grant, now + self.lifetime)
        return session

    def grant_of(self, session: str) -> Optional[Grant]:
        """The grant of a live session, or None (unknown or expired)."""
        found = self._sessions.get(session)
        if found is None:
            return None
        grant, expiry = found
        if expiry <= self._clock():
            del self._sessions[session]
            return None
        return grant

    def close(self, session: str) -> None:
        """Forget a session (logout)."""
        self._sessions.pop(session, None)


class Gate:
    """
    Decides, for each request, with which grant it is served, or refuses it.

    :param auth: the daemon's authenticator (its tokens and roles).
    :param sessions: the login sessions.
    """

    def __init__(self, auth: TokenAuthenticator, sessions: Sessions) -> None:
        self.auth = auth
        self.sessions = sessions

    def check_token(self, request: IRequest, token: object) -> Grant:
        """
        The grant of a token given to ``/?token=`` or ``/login``.

        :raises Refused: 401 for a wrong token, 403 without the monitor right
            or from a remote peer in protected mode.
        """
        if self.auth.protected_mode:
            return self.grant_of(request)  # loopback only, whatever the token
        grant = self.auth.authenticate(token)
        if grant is None:
            raise Refused(401, "wrong token")
        return _monitoring(grant)

    def grant_of(self, request: IRequest) -> Grant:
        """
        The grant ``request`` is served with.

        :raises Refused: 401 without (good) credentials, 403 for a token
            without the monitor right or a remote peer in protected mode.
        """
        if self.auth.protected_mode:
            if not is_loopback(request.getClientAddress()):
                raise Refused(403, "the daemon runs without a token and serves "
                                   "loopback clients only")
            return Grant.everything("protected mode")
        header = _header(request, b"authorization")
        if header is not None:
            scheme, _, token = header.partition(" ")
            if scheme.lower() != "bearer" or not token.strip():
                raise Refused(401, "give the token as Authorization: Bearer TOKEN")
            return self.check_token(request, token.strip())
        session = request.getCookie(COOKIE)
        if session is not None:
            grant = self.sessions.grant_of(session.decode("ascii", "replace"))
            if grant is not None:
                return _monitoring(grant)
            raise Refused(401, "the session has expired: log in again")
        raise Refused(401, "a token is needed: Authorization: Bearer TOKEN, "
                           "or log in at /login")

    def login(self, request: IRequest, grant: Grant) -> None:
        """Open a session for ``grant`` and set its cookie on the response."""
        session = self.sessions.open(grant)
        request.addCookie(COOKIE, session.encode("ascii"), path=b"/",
                          max_age=str(int(self.sessions.lifetime)).encode("ascii"),
                          secure=request.isSecure(), httpOnly=True, sameSite="strict")

    def logout(self, request: IRequest) -> None:
        """Close the request's session, if any, and clear its cookie."""
        session = request.getCookie(COOKIE)
        if session is not None:
            self.sessions.close(session.decode("ascii", "replace"))
        request.addCookie(COOKIE, b"", path=b"/", max_age=b"0",
                          secure=request.isSecure(), httpOnly=True, sameSite="strict")


def same_origin(request: IRequest) -> bool:
    """
    Whether a state-changing request (a POST) comes from one of our own
    pages: its ``Origin`` (or, lacking it, ``Referer``) is this host.  The
    session cookie is ``SameSite=Strict`` anyway; this refuses a form posted
    from another site to log a browser in as someone else.
    """
    host = _header(request, b"host")
    origin = _header(request, b"origin") or _header(request, b"referer")
    if origin is None:
        return False
    scheme = "https" if request.isSecure() else "http"
    expected = f"{scheme}://{host}"
    return origin == expected or origin.startswith(expected + "/")


def _header(request: IRequest, name: bytes) -> Optional[str]:
    value = request.getHeader(name)
    return None if value is None else value.decode("latin-1")


def _monitoring(grant: Grant) -> Grant:
    if not grant.allows(MONITOR):
        raise Refused(403, f"the token {grant.name!r} may not monitor the daemon "
                           f"(it needs the {MONITOR} right)")
    return grant


__all__ = ["COOKIE", "Gate", "Refused", "Sessions", "same_origin"]
