"""
The durable store against the store model of tests.state.test_store, with
restarts and compactions among the operations: revisions, compare-and-set,
counters and deadlines come back from the journal and the snapshot exactly.
"""

from __future__ import annotations

import shutil
import tempfile
from typing import Any

from hypothesis import settings
from hypothesis.stateful import rule, run_state_machine_as_test
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure
from twisted.trial.unittest import SynchronousTestCase

from lttx.errors import StorageError
from lttx.storage.durable import DurableStore

from ..state.test_store import StoreMachine
from .test_durable import open_store


class DurableMachine(StoreMachine):
    def make_store(self) -> DurableStore:
        self.directory = tempfile.mkdtemp()
        return self.start()

    def start(self) -> DurableStore:
        return open_store(self.directory, "no", self.clock, snapshot_chunk=1,
                          compaction_slice=0, compaction_gap=1, compact_min_bytes=400)

    def settle(self, result: Any) -> Any:
        if not isinstance(result, Deferred):
            return result
        self.clock.advance(0)
        outcome: list[Any] = []
        result.addBoth(outcome.append)
        assert outcome, "the journal did not answer"
        if isinstance(outcome[0], Failure):
            outcome[0].raiseException()
        return outcome[0]

    @rule()
    def restart(self) -> None:
        """SIGTERM and a new start on the same directory."""
        self.settle(self.store.stopService())
        self.store = self.start()

    @rule()
    def compact(self) -> None:
        self.store.compact().addErrback(lambda f: f.trap(StorageError))

    def teardown(self) -> None:
        self.settle(self.store.stopService())
        shutil.rmtree(self.directory)


class DurableModelTests(SynchronousTestCase):
    def test_durable_store_behaves_like_the_model_across_restarts(self) -> None:
        """Random operations, restarts and compactions give the model's results and state."""
        run_state_machine_as_test(DurableMachine, settings=settings(
            max_examples=60, stateful_step_count=40, deadline=None))
