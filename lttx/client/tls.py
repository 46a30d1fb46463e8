"""
TLS for the client: verify the daemon's certificate and host name.

The daemon needs nothing from here: it listens on an ``ssl:`` endpoint string
(``--listen ssl:2025:privateKey=key.pem:certKey=cert.pem``).  The client wraps
its TCP endpoint with :func:`tls_endpoint`, whose connection is handed over
only once the handshake has completed and the certificate has been verified
(chain against the given CA, host name or IP address with
``service-identity``); a failure is a :class:`~lttx.errors.TLSError` that says
which of the two went wrong.
"""

from __future__ import annotations

import re
from typing import Any, Optional

from OpenSSL import SSL
from service_identity import VerificationError
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IHandshakeListener,
    IOpenSSLClientConnectionCreator,
    IProtocol,
    IProtocolFactory,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.ssl import (
    Certificate,
    optionsForClientTLS,
    platformTrust,
    trustRootFromCertificates,
)
from twisted.internet._producer_helpers import _PullToPush
from twisted.internet.task import Cooperator
from twisted.protocols.tls import TLSMemoryBIOFactory, TLSMemoryBIOProtocol
from twisted.python.failure import Failure
from zope.interface import implementer

from ..errors import TLSError
from ..wire.tls import openssl_reason

_PEM_CERTIFICATE = re.compile(
    rb"-----BEGIN CERTIFICATE-----\r?\n.+?\r?\n-----END CERTIFICATE-----", re.DOTALL)


def load_ca(path: str) -> Any:
    """
    The trust root made of every certificate in a PEM file (one CA or a bundle).

    :raises TLSError: if the file cannot be read or holds no certificate.
    """
    try:
        with open(path, "rb") as f:
            pem = f.read()
    except OSError as e:
        raise TLSError(f"cannot read the CA file {path}: {e.strerror}") from None
    blocks = _PEM_CERTIFICATE.findall(pem)
    if not blocks:
        raise TLSError(f"the CA file {path} holds no PEM certificate")
    try:
        certificates = [Certificate.loadPEM(block) for block in blocks]
    except SSL.Error as e:
        raise TLSError(f"the CA file {path} holds a certificate that cannot be read: {e}") from None
    return trustRootFromCertificates(certificates)


def client_tls_options(hostname: str, ca: Optional[str]) -> IOpenSSLClientConnectionCreator:
    """
    TLS options that trust the CA(s) in ``ca`` (the system's CAs if None) and
    check that the certificate is for ``hostname`` (a DNS name or an IP address).
    """
    trust = platformTrust() if ca is None else load_ca(ca)
    return optionsForClientTLS(hostname, trustRoot=trust)


def tls_endpoint(reactor: IReactorTime, endpoint: IStreamClientEndpoint, hostname: str,
                 port: int, ca: Optional[str]) -> IStreamClientEndpoint:
    """
    ``endpoint`` with TLS on top; its ``connect`` fires with the application
    protocol once the daemon's certificate has been verified.

    :param reactor: the reactor ``endpoint`` runs on; the TLS layer schedules
        its write batching there (by default it would use the global reactor,
        which does not run under the blocking client).
    :raises TLSError: (now) if the CA file cannot be read.
    """
    return _VerifiedTLSEndpoint(reactor, endpoint, client_tls_options(hostname, ca),
                                (hostname, port, ca))


def handshake_error(reason: Failure, hostname: str, port: int,
                    ca: Optional[str]) -> TLSError:
    """The :class:`TLSError` a connection lost during the handshake stands for."""
    where = f"the LTtx daemon at {hostname}:{port}"
    trusted = f"the CA in {ca}" if ca else "the system's trusted CAs"
    if reason.check(VerificationError):
        return TLSError(
            f"wrong host name: the certificate of {where} is not valid for "
            f"{hostname!r} (it was issued for another name or address)")
    if reason.check(SSL.Error):
        detail = openssl_reason(reason.value)
        if "certificate verify failed" in detail:
            return TLSError(
                f"untrusted certificate: the certificate of {where} is not signed by "
                f"{trusted}, or has expired ({detail})")
        return TLSError(f"TLS handshake with {where} failed ({detail}); "
                        "is the daemon listening with TLS (an ssl: endpoint)?")
    if reason.check(ConnectionClosed):
        return TLSError(f"{where} closed the connection during the TLS handshake; "
                        "is the daemon listening with TLS (an ssl: endpoint)?")
    return TLSError(f"TLS handshake with {where} failed: {reason.getErrorMessage()}")


@implementer(IStreamClientEndpoint)
class _VerifiedTLSEndpoint:
    """A TLS-wrapped endpoint whose connection is ready only after the handshake."""

    def __init__(self, reactor: IReactorTime, wrapped: IStreamClientEndpoint,
                 creator: IOpenSSLClientConnectionCreator,
                 describe: tuple[str, int, Optional[str]]) -> None:
        self._reactor = reactor
        self._wrapped = wrapped
        self._creator = creator
        self._describe = describe

    def connect(self, factory: IProtocolFactory) -> "Deferred[IProtocol]":
        tls_factory = _TLSFactory(self._reactor, self._creator,
                                  _HandshakeFactory(factory, self._describe))
        d: Deferred[Any] = self._wrapped.connect(tls_factory)

        def handshake(tls: Any) -> "Deferred[IProtocol]":
            watcher: _HandshakeWatcher = tls.wrappedProtocol
            return watcher.handshake

        return d.addCallback(handshake)


class _TLSFactory(TLSMemoryBIOFactory):
    """
    Client TLS whose timers and producers run on the given reactor.

    Twisted's TLS layer batches writes with the global reactor's clock unless
    told otherwise, and drives a pull producer (``FileSender``) with the
    global cooperator; neither runs under the blocking client, whose reactor
    is a private one.
    """

    noisy = False  # the client logs its connections itself

    def __init__(self, reactor: IReactorTime, creator: IOpenSSLClientConnectionCreator,
                 factory: IProtocolFactory) -> None:
        super().__init__(creator, True, factory, clock=reactor)
        self.cooperator = Cooperator(scheduler=lambda work: reactor.callLater(0, work))
        self.protocol = _TLSProtocol


class _ReactorPullToPush(_PullToPush):
    """Twisted's pull-to-push adapter, driven by a cooperator of our choosing."""

    def __init__(self, producer: Any, consumer: Any, cooperator: Cooperator) -> None:
        super().__init__(producer, consumer)
        self._cooperator = cooperator

    def startStreaming(self) -> None:
        self._coopTask = self._cooperator.cooperate(self._pull())


class _TLSProtocol(TLSMemoryBIOProtocol):
    def registerProducer(self, producer: Any, streaming: bool) -> None:
        if streaming or self._lostTLSConnection:
            super().registerProducer(producer, streaming)
            return
        factory: Any = self.factory  # a _TLSFactory
        push = _ReactorPullToPush(producer, self, factory.cooperator)
        # The parent registers it as a push producer, and stops it on
        # unregisterProducer since it is a _PullToPush.
        super().registerProducer(push, True)
        push.startStreaming()


class _HandshakeFactory(Factory):
    """Builds a watcher around each protocol the application's factory builds."""

    noisy = False  # the client logs its connections itself

    def __init__(self, factory: IProtocolFactory,
                 describe: tuple[str, int, Optional[str]]) -> None:
        self._factory = factory
        self._describe = describe

    def buildProtocol(self, addr: Any) -> Optional["_HandshakeWatcher"]:
        protocol = self._factory.buildProtocol(addr)
        if protocol is None:
            return None
        return _HandshakeWatcher(protocol, self._describe)


@implementer(IHandshakeListener)
class _HandshakeWatcher(Protocol):
    """
    Sits between the TLS layer and the application protocol, whose transport
    is the TLS layer itself; it only tells when the handshake ends, and why a
    connection lost before that was lost.
    """

    def __init__(self, protocol: IProtocol, describe: tuple[str, int, Optional[str]]) -> None:
        self._protocol = protocol
        self._describe = describe
        self.handshake: Deferred[IProtocol] = Deferred(self._cancel)

    def _cancel(self, d: "Deferred[IProtocol]") -> None:
        # The TLS layer (an ITCPTransport) can abort, even mid-handshake.
        transport: Any = self.transport
        if transport is not None:
            transport.abortConnection()

    def makeConnection(self, transport: Any) -> None:
        self.transport = transport
        self._protocol.makeConnection(transport)

    def handshakeCompleted(self) -> None:
        if not self.handshake.called:
            self.handshake.callback(self._protocol)

    def dataReceived(self, data: bytes) -> None:
        self._protocol.dataReceived(data)

    def connectionLost(self, reason: Failure = None) -> None:  # type: ignore[assignment]
        if not self.handshake.called:
            self.handshake.errback(handshake_error(reason, *self._describe))
        self._protocol.connectionLost(reason)
