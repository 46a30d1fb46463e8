"""
Helpers of the HTTP side's tests: a real daemon with ``--http`` and a roles
file, and a plain HTTP client (``http.client``: no redirect is followed, so
tests see the 303s themselves).
"""

from __future__ import annotations

import http.client
import json
import re
import ssl
from typing import Any, Optional

from twisted.trial.unittest import TestCase

from ..common import Daemon

#: The tokens of the daemons started here: every right, monitor only, read only.
ROLES = {"tokens": [
    {"name": "admin", "token": "tok-admin", "rights": ["all"]},
    {"name": "grafana", "token": "tok-monitor", "rights": ["monitor"]},
    {"name": "reader", "token": "tok-reader", "rights": ["read", "subscribe"]},
]}


class Response:
    """What an HTTP request got back."""

    def __init__(self, status: int, headers: list[tuple[str, str]], body: bytes) -> None:
        self.status = status
        self.headers = headers
        self.body = body

    def header(self, name: str) -> Optional[str]:
        for key, value in self.headers:
            if key.lower() == name.lower():
                return value
        return None

    def json(self) -> Any:
        return json.loads(self.body)

    @property
    def text(self) -> str:
        return self.body.decode("utf-8")


class HttpDaemon:
    """A real ``twistd -n lttx`` with the roles of :data:`ROLES` and ``--http``."""

    def __init__(self, testcase: TestCase, *args: str, roles: Any = ROLES,
                 http: str = "tcp:0:interface=127.0.0.1",
                 tls: Optional[ssl.SSLContext] = None) -> None:
        path = testcase.mktemp()
        with open(path, "w", encoding="utf-8") as f:
            json.dump(roles, f)
        self.daemon = Daemon(testcase, "--token-file", path,
                             "--http", http, *args, token=None)
        line = self.daemon.wait_for_log(r"LTtx HTTP status page on .* at [\d.]+:\d+")
        self.http_port = int(re.search(r"at [\d.]+:(\d+)", line).group(1))  # type: ignore
        self.tls = tls
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.http_port}"

    def request(self, path: str, token: Optional[str] = None, method: str = "GET",
                headers: Optional[dict[str, str]] = None, body: Optional[bytes] = None
                ) -> Response:
        """One request; ``token`` goes in ``Authorization: Bearer``."""
        connection = (
            http.client.HTTPSConnection("127.0.0.1", self.http_port, timeout=15,
                                        context=self.tls) if self.tls
            else http.client.HTTPConnection("127.0.0.1", self.http_port, timeout=15))
        try:
            sent = dict(headers or {})
            if token is not None:
                sent["Authorization"] = f"Bearer {token}"
            connection.request(method, path, body=body, headers=sent)
            response = connection.getresponse()
            return Response(response.status, response.getheaders(), response.read())
        finally:
            connection.close()
