"""
The HTTP resources and the ``twisted.web`` site that serves them.

=====================  ======================================================
``/``                  the status page (HTML; ``?token=`` logs a browser in)
``/login``             the login form (GET) and its submission (POST)
``/logout``            ends the session (POST)
``/status.json``       the ``status`` command's report
``/connections.json``  the open connections
``/history.json``      the rates of the last minutes (``?since=TIME``)
``/metrics``           Prometheus text exposition format
``/healthz``           200 ``ok`` or 503 with the reason; no token needed
``/static/...``        the page's CSS and JavaScript (no secrets, no token)
=====================  ======================================================

Access is decided by :class:`~lttx.web.access.Gate`; documented in
``docs/http.md``.
"""

from __future__ import annotations

import html
import json
from importlib import resources
from typing import Any, Callable, Optional

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.iweb import IRequest
from twisted.web.resource import Resource
from twisted.web.server import NOT_DONE_YET, Request, Site

from ..diskio import RunInThread, run_inline
from ..server.state import ServerState
from ..state.auth import Grant
from .access import Gate, Refused, Sessions, same_origin
from .history import History
from .metrics import CONTENT_TYPE, exposition
from .report import StatusReports, connections_report, health

log = Logger(namespace="lttx.web")

#: The page's assets, served under /static/: name -> content type.
ASSETS = {"app.js": b"text/javascript; charset=utf-8",
          "style.css": b"text/css; charset=utf-8",
          "favicon.svg": b"image/svg+xml"}

_SECURITY_HEADERS = {
    b"x-content-type-options": b"nosniff",
    # Same-origin: a form post carries its Origin (no-referrer would make it "null").
    b"referrer-policy": b"same-origin",
    b"cache-control": b"no-store",
    b"x-frame-options": b"DENY",
}
_PAGE_POLICY = (b"default-src 'none'; script-src 'self'; style-src 'self'; "
                b"connect-src 'self'; img-src 'self'; form-action 'self'; "
                b"frame-ancestors 'none'; base-uri 'none'")


def _asset(name: str) -> bytes:
    return resources.files(__package__).joinpath("static").joinpath(name).read_bytes()


def _headers(request: IRequest, content_type: bytes) -> None:
    for key, value in _SECURITY_HEADERS.items():
        request.setHeader(key, value)
    request.setHeader(b"content-type", content_type)


def _text(request: IRequest, code: int, text: str) -> bytes:
    request.setResponseCode(code)
    _headers(request, b"text/plain; charset=utf-8")
    if code == 401:
        request.setHeader(b"www-authenticate", b'Bearer realm="lttx"')
    return (text + "\n").encode("utf-8")


def _redirect(request: IRequest, location: bytes) -> bytes:
    request.setResponseCode(303)
    _headers(request, b"text/plain; charset=utf-8")
    request.setHeader(b"location", location)
    return b""


def _peer(request: IRequest) -> str:
    address = request.getClientAddress()
    return f"{getattr(address, 'host', address)}:{getattr(address, 'port', '')}"


def _answer(request: Any, value: Any, render: Callable[[Any], bytes]) -> Any:
    """Render ``value`` now, or once the Deferred it is fires."""
    if not isinstance(value, Deferred):
        return render(value)
    finished: list[bool] = []
    request.notifyFinish().addBoth(finished.append)

    def write(result: Any) -> None:
        if not finished:
            request.write(render(result))
            request.finish()

    def failed(failure: Failure) -> None:
        log.failure("the status report failed", failure)
        if not finished:
            request.write(_text(request, 500, "the status report failed"))
            request.finish()

    value.addCallback(write).addErrback(failed)
    return NOT_DONE_YET


class _Guarded(Resource):
    """A resource served only to a request the gate lets in."""

    isLeaf = True

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def render_GET(self, request: IRequest) -> Any:
        try:
            grant = self.gate.grant_of(request)
        except Refused as refused:
            return self.refused(request, refused)
        return self.serve(request, grant)

    def refused(self, request: IRequest, refused: Refused) -> bytes:
        return _text(request, refused.code, refused.reason)

    def serve(self, request: IRequest, grant: Grant) -> Any:
        raise NotImplementedError


class _Json(_Guarded):
    """A JSON document made by ``make(state)``."""

    def __init__(self, gate: Gate, make: Callable[[IRequest], Any]) -> None:
        super().__init__(gate)
        self.make = make

    def serve(self, request: IRequest, grant: Grant) -> Any:
        def render(document: Any) -> bytes:
            _headers(request, b"application/json")
            return json.dumps(document, default=str).encode("utf-8")
        return _answer(request, self.make(request), render)


class _Metrics(_Guarded):
    """
    ``/metrics``.  The report is made on the reactor (a snapshot of plain
    values); its text, which takes ``prometheus_client`` about 30 µs a sample
    (some 30 ms for a thousand channels), is written in a thread, so that a
    scrape does not hold the reactor that long.
    """

    def __init__(self, gate: Gate, reports: StatusReports, run: RunInThread) -> None:
        super().__init__(gate)
        self.reports = reports
        self.run = run

    def serve(self, request: IRequest, grant: Grant) -> Any:
        report = self.reports.get()
        text = (report.addCallback(lambda r: self.run(exposition, r))
                if isinstance(report, Deferred) else self.run(exposition, report))

        def render(body: bytes) -> bytes:
            _headers(request, CONTENT_TYPE.encode("ascii"))
            return body
        return _answer(request, text, render)


class _Page(_Guarded):
    """``/``: the page, or the login form; ``?token=`` logs in and redirects."""

    def render_GET(self, request: IRequest) -> Any:
        token = request.args.get(b"token")
        if token:
            try:
                grant = self.gate.check_token(request, token[0].decode("utf-8", "replace"))
            except Refused as refused:
                log.info("HTTP {peer}: login refused: {reason}",
                         peer=_peer(request), reason=refused.reason)
                return self.refused(request, refused)
            self.gate.login(request, grant)
            log.info("HTTP {peer} logged in as {role}", peer=_peer(request), role=grant.name)
            return _redirect(request, b"/")
        return super().render_GET(request)

    def refused(self, request: IRequest, refused: Refused) -> bytes:
        request.setResponseCode(refused.code)
        return login_form(request, refused.reason)

    def serve(self, request: IRequest, grant: Grant) -> bytes:
        _headers(request, b"text/html; charset=utf-8")
        request.setHeader(b"content-security-policy", _PAGE_POLICY)
        return _asset("index.html")


def login_form(request: IRequest, reason: str = "") -> bytes:
    """The login page, saying ``reason`` (why the page was not shown)."""
    _headers(request, b"text/html; charset=utf-8")
    request.setHeader(b"content-security-policy", _PAGE_POLICY)
    page = _asset("login.html").decode("utf-8")
    return page.replace("{{reason}}", html.escape(reason)).encode("utf-8")


class _Login(Resource):
    isLeaf = True

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def render_GET(self, request: IRequest) -> bytes:
        return login_form(request)

    def render_POST(self, request: IRequest) -> bytes:
        if not same_origin(request):
            request.setResponseCode(403)
            return login_form(request, "the form must be posted from this daemon's own page")
        token = (request.args.get(b"token") or [b""])[0].decode("utf-8", "replace").strip()
        try:
            grant = self.gate.check_token(request, token)
        except Refused as refused:
            log.info("HTTP {peer}: login refused: {reason}",
                     peer=_peer(request), reason=refused.reason)
            request.setResponseCode(refused.code)
            return login_form(request, refused.reason)
        self.gate.login(request, grant)
        log.info("HTTP {peer} logged in as {role}", peer=_peer(request), role=grant.name)
        return _redirect(request, b"/")


class _Logout(Resource):
    isLeaf = True

    def __init__(self, gate: Gate) -> None:
        super().__init__()
        self.gate = gate

    def render_POST(self, request: IRequest) -> bytes:
        if not same_origin(request):
            return _text(request, 403, "the form must be posted from this daemon's own page")
        self.gate.logout(request)
        return _redirect(request, b"/login")


class _Health(Resource):
    isLeaf = True

    def __init__(self, state: ServerState) -> None:
        super().__init__()
        self.state = state

    def render_GET(self, request: IRequest) -> bytes:
        try:
            problem = health(self.state)
        except Exception:  # a component's status() failed: that is unhealthy too
            log.failure("the health check failed")
            problem = "the health check failed"
        if problem is None:
            return _text(request, 200, "ok")
        return _text(request, 503, f"unavailable: {problem}")


class _Static(Resource):
    def __init__(self) -> None:
        super().__init__()
        for name, content_type in ASSETS.items():
            self.putChild(name.encode("ascii"), _Asset(name, content_type))


class _Asset(Resource):
    isLeaf = True

    def __init__(self, name: str, content_type: bytes) -> None:
        super().__init__()
        self.body = _asset(name)
        self.content_type = content_type

    def render_GET(self, request: IRequest) -> bytes:
        _headers(request, self.content_type)
        request.setHeader(b"cache-control", b"no-cache")
        return self.body


#: The largest request body read (a login form is under 1 KiB).
MAX_BODY = 16 * 1024
#: Seconds an idle HTTP connection is kept.
IDLE_TIMEOUT = 60


class _LimitedRequest(Request):
    """A request whose body may not exceed :data:`MAX_BODY`: past it, the
    connection is dropped (no one may make the daemon buffer a large upload)."""

    _body_bytes = 0

    def handleContentChunk(self, data: bytes) -> None:
        self._body_bytes += len(data)
        if self._body_bytes > MAX_BODY:
            transport: Any = self.channel.transport
            if not transport.disconnecting:
                log.info("HTTP {peer}: request body over {limit} bytes; closed",
                         peer=_peer(self), limit=MAX_BODY)
                transport.abortConnection()
            return
        super().handleContentChunk(data)


class StatusSite(Site):
    """The site; requests are not logged one line each (a scrape a second would flood)."""

    displayTracebacks = False
    noisy = False
    requestFactory = _LimitedRequest

    def log(self, request: Any) -> None:
        pass


def make_site(state: ServerState, history: History,
              reactor: Optional[IReactorTime] = None,
              run: RunInThread = run_inline) -> StatusSite:
    """
    The HTTP site of one daemon.

    :param state: what the daemon's connections share (the status report).
    :param history: the ring of rates the page's charts draw.
    :param reactor: times session expiry and idle HTTP connections (the
        state's clock by default).
    :param run: where the metrics text is written (the reactor's thread pool
        in the daemon; at once by default).
    """
    if reactor is None:
        assert state.clock is not None, "give a reactor, or a state with a clock"
        reactor = state.clock
    clock = reactor.seconds
    gate = Gate(state.auth, Sessions(clock))
    reports = StatusReports(state, clock)
    root = Resource()
    root.putChild(b"", _Page(gate))
    root.putChild(b"login", _Login(gate))
    root.putChild(b"logout", _Logout(gate))
    root.putChild(b"status.json", _Json(gate, lambda request: reports.get()))
    root.putChild(b"connections.json",
                  _Json(gate, lambda request: connections_report(state)))
    root.putChild(b"history.json",
                  _Json(gate, lambda request: history.since(_since(request))))
    root.putChild(b"metrics", _Metrics(gate, reports, run))
    root.putChild(b"healthz", _Health(state))
    root.putChild(b"static", _Static())
    root.putChild(b"favicon.ico", _Asset("favicon.svg", ASSETS["favicon.svg"]))
    site = StatusSite(root, timeout=IDLE_TIMEOUT, reactor=reactor)
    site.gate = gate  # type: ignore[attr-defined]
    return site


def _since(request: IRequest) -> float:
    try:
        return float((request.args.get(b"since") or [b"0"])[0])
    except ValueError:
        return 0.0


__all__ = ["ASSETS", "StatusSite", "make_site"]
