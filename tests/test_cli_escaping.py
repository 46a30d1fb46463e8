"""
Names printed by ``lttx`` are escaped (SPEC §6, issue 19 finding 12): a name
holding a newline, an ESC or a right-to-left override cannot forge a line of
a listing or reorder what the terminal shows.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import TestCase

from .common import Daemon
from .test_cli import CLITestMixin

FORGED = "a\nfake-variable"
RTL = "report\u202efdp.exe"


class EscapedNamesTests(CLITestMixin, TestCase):
    def setUp(self) -> None:
        self.daemon = Daemon(self)
        self.client = self.daemon.connect()
        self.addCleanup(self.client.close)

    def test_keys_escape_control_and_bidi_characters(self) -> None:
        """`lttx keys` prints one line per name, with \\n and \\u202e escaped."""
        for name in (FORGED, RTL, "plain"):
            self.client.put(name, 1)
        lines = self.lttx("keys").splitlines()
        self.assertEqual(lines, ["'a\\nfake-variable'", "plain", "'report\\u202efdp.exe'"])

    def test_json_output_escapes_bidi_characters(self) -> None:
        """JSON lines keep non-ASCII text readable but escape formatting characters."""
        self.client.put(RTL, "浦发\u2028银行")
        out = self.lttx("keys", "--json")
        self.assertNotIn("\u202e", out)
        self.assertEqual(json.loads(out), [RTL])
        got = self.lttx("get", RTL)
        self.assertNotIn("\u2028", got)
        self.assertIn("浦发", got)
        self.assertEqual(json.loads(got), "浦发\u2028银行")

    def test_files_listing_escapes_names(self) -> None:
        """`lttx files` shows a plain name as it is; names on disk the rules refuse are
        not listed at all (they could not be downloaded)."""
        folder = os.path.join(self.daemon.data_dir, "files")
        with open(os.path.join(folder, "x\n   999  2026-01-01 00:00:00  forged"), "wb") as f:
            f.write(b"x")
        source = self.mktemp()
        with open(source, "wb") as f:
            f.write(b"data")
        self.client.send_file(source, "café.txt")
        listing = self.lttx("files")
        self.assertEqual(len(listing.splitlines()), 1, listing)
        self.assertTrue(listing.rstrip("\n").endswith("  café.txt"), listing)
