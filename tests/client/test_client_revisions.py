"""
The asynchronous client's revisions, compare-and-set, counters and expiry,
against the real server protocol in memory (the blocking client's are driven
against a real daemon in tests.test_variables_integration).
"""

from __future__ import annotations

from twisted.internet.testing import MemoryReactorClock
from twisted.trial.unittest import SynchronousTestCase

import lttx
from lttx.state.store import MemoryStore

from .test_client import connected_client


class AsyncRevisionTests(SynchronousTestCase):
    def test_revisions_cas_incr_and_expiry(self) -> None:
        """Each new command and option gives the Deferred the daemon's answer."""
        clock = MemoryReactorClock()
        clock.advance(1_800_000_000)
        client, daemon = connected_client(self, store=MemoryStore(clock.seconds))
        results = [
            client.get("limits", "none", revision=True),
            client.put("limits", {"max": 5}, if_revision=0),
            client.put("limits", {"max": 6}, if_revision=0),
            client.get("limits", revision=True),
            client.dict_change("limits", "min", 1, if_revision=1),
            client.list_pop("limits", 0, if_revision=9),
            client.incr("fills"), client.incr("fills", 0.5),
            client.put("lease", "me", ttl=2.0), client.ttl("lease"), client.ttl("fills"),
            client.expire("nothing", 1), client.delete("limits", if_revision=1),
        ]
        daemon.flush()
        self.assertEqual(self.successResultOf(results[0]), ("none", 0))
        self.assertIsNone(self.successResultOf(results[1]))
        error = self.failureResultOf(results[2], lttx.Conflict).value
        self.assertEqual(str(error), "'limits' exists (revision 1); if_revision=0 needs it absent")
        self.assertEqual(self.successResultOf(results[3]), ({"max": 5}, 1))
        self.assertIsNone(self.successResultOf(results[4]))
        self.failureResultOf(results[5], lttx.WrongTypeError)  # the type first
        self.assertEqual([self.successResultOf(d) for d in results[6:8]], [1, 1.5])
        self.assertEqual([self.successResultOf(d) for d in results[8:12]], [None, 2.0, None,
                                                                            False])
        self.failureResultOf(results[12], lttx.Conflict)
