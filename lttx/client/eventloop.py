"""
A reactor of its own, running in a background thread, for blocking callers.

This is crochet's pattern done by hand (crochet 2.1.1 calls the deprecated
``Event.isSet`` and costs a thread hop per call that a publisher cannot
afford).  Each :class:`EventLoop` builds a private, uninstalled reactor, so
the blocking client works in a plain script, beside an application's own
reactor, in a notebook, and in ``trial`` tests; its thread is a daemon thread
and the reactor is stopped at interpreter exit, so a program that never calls
``close()`` still exits at once.
"""

from __future__ import annotations

import atexit
import functools
import threading
import weakref
from typing import Any, Callable, Generic, Optional, TypeVar

from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from ..errors import LTtxError, TimeoutError

_T = TypeVar("_T")


def _private_reactor() -> Any:
    """A new reactor object, not installed as the global one."""
    try:
        from twisted.internet.epollreactor import EPollReactor

        return EPollReactor()
    except ImportError:  # not Linux
        from twisted.internet.selectreactor import SelectReactor

        return SelectReactor()


def _stop_at_exit(ref: "weakref.ref[EventLoop]") -> None:
    loop = ref()
    if loop is not None:
        loop.stop(wait=0.5)


class Waiter(Generic[_T]):
    """
    One blocking call's result, handed from the reactor thread to the caller.

    Lighter than :class:`concurrent.futures.Future` (whose ``result()`` is a
    Condition wait: a lock made per wait, a second lock, a notify): a lock
    held from the start and released once the result is in.  The first
    result set wins; a later one (a reply racing ``stop()``) is ignored.
    """

    __slots__ = ("_done", "_guard", "_set", "result", "error")

    def __init__(self) -> None:
        self._done = threading.Lock()
        self._done.acquire()
        self._guard = threading.Lock()
        self._set = False  # under _guard: the waiting thread re-takes _done
        self.result: Any = None
        self.error: Optional[BaseException] = None

    def set_result(self, result: Any) -> None:
        with self._guard:
            if not self._set:
                self._set = True
                self.result = result
                self._done.release()

    def set_exception(self, error: BaseException) -> None:
        with self._guard:
            if not self._set:
                self._set = True
                self.error = error
                self._done.release()

    def set_failure(self, failure: Failure) -> None:
        self.set_exception(failure.value)  # type: ignore[arg-type]  # never None here

    # As a pending request's reply (lttx.client.protocol settles it like a Deferred).
    callback = set_result

    def errback(self, error: "BaseException | Failure") -> None:
        self.set_exception(error.value if isinstance(error, Failure) else error)

    def done(self) -> bool:
        return self._set

    def wait(self, timeout: Optional[float]) -> bool:
        """Wait for the result; False if ``timeout`` seconds passed first."""
        return self._done.acquire(True, -1 if timeout is None else timeout)


class EventLoop:
    """A reactor running in its own daemon thread."""

    def __init__(self, reactor: Any = None, name: str = "lttx-reactor") -> None:
        self.reactor = reactor if reactor is not None else _private_reactor()
        self._stopped = False
        # Callers waiting on the loop: failed at stop, so no thread waits forever.
        self._waiting: "set[Waiter[Any]]" = set()
        self._thread = threading.Thread(target=self._run, name=name, daemon=True)
        self._thread.start()
        # A partial of its own, so unregistering it leaves other loops' hooks.
        self._exit_hook = functools.partial(_stop_at_exit, weakref.ref(self))
        atexit.register(self._exit_hook)

    def _run(self) -> None:
        self.reactor.run(installSignalHandlers=False)

    @property
    def waiting(self) -> "set[Waiter[Any]]":
        """The callers waiting on the loop: :meth:`stop` fails each."""
        return self._waiting

    @property
    def in_loop_thread(self) -> bool:
        return threading.get_ident() == self._thread.ident

    def call_soon(self, f: Callable[..., Any], *args: Any) -> None:
        """Run ``f(*args)`` in the reactor thread; do not wait."""
        self.reactor.callFromThread(f, *args)

    def run(self, f: Callable[..., "Deferred[_T] | _T"], *args: Any,
            timeout: Optional[float] = None) -> _T:
        """
        Run ``f(*args)`` in the reactor thread and wait for its result (the
        result of its Deferred, if it returns one).

        :raises lttx.TimeoutError: after ``timeout`` seconds; the Deferred is
            cancelled.
        """
        if self.in_loop_thread:
            raise RuntimeError("a blocking LTtx call was made in the reactor thread; "
                               "use the Deferred-returning client there")
        if self._stopped:
            raise LTtxError("the client is closed")
        waiter: "Waiter[_T]" = Waiter()
        running: list[Deferred[Any]] = []

        def start() -> None:
            try:
                result = f(*args)
            except BaseException as e:
                waiter.set_exception(e)
                return
            if isinstance(result, Deferred):
                running.append(result)
                result.addCallbacks(waiter.set_result, waiter.set_failure)
            else:
                waiter.set_result(result)

        self._waiting.add(waiter)
        try:
            self.reactor.callFromThread(start)
            if not waiter.wait(timeout):
                self.reactor.callFromThread(lambda: [d.cancel() for d in running])
                raise TimeoutError(f"no reply within {timeout} seconds")
        finally:
            self._waiting.discard(waiter)
        if waiter.error is not None:
            raise waiter.error
        return waiter.result  # type: ignore[no-any-return]

    def stop(self, wait: float = 5.0) -> None:
        """Stop the reactor and wait (up to ``wait`` seconds) for the thread."""
        if self._stopped:
            return
        self._stopped = True
        atexit.unregister(self._exit_hook)
        if self._thread.is_alive():
            self.reactor.callFromThread(self._stop_reactor)
            if not self.in_loop_thread:
                self._thread.join(wait)
        for waiter in list(self._waiting):
            waiter.set_exception(LTtxError("the client was closed while this call waited"))

    def _stop_reactor(self) -> None:
        if self.reactor.running:
            self.reactor.stop()
