"""
The daemon's HTTP side (``--http ENDPOINT``): a live status page for people,
``/status.json``, Prometheus ``/metrics`` and ``/healthz``, served by a
``twisted.web`` site in the daemon's reactor.

``site`` assembles the resources, ``access`` owns who may see them (bearer
tokens, the login session cookie, loopback-only without a token), ``report``
the JSON documents (the status report, the connections), ``metrics`` the
Prometheus exposition, ``history`` the small ring of rates the page's charts
draw.  The page itself (HTML, CSS, JavaScript) is package data under
``static/``.  Everything is read from counters the daemon keeps anyway, when
asked: nothing here runs on the message path.  The HTTP API is documented in
``docs/http.md``.
"""

from .site import make_site

__all__ = ["make_site"]
