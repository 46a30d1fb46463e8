"""
Channel passwords under a roles file (issue 19, finding 10): a password one
token set cannot lock out a token with ``all`` or a right naming the
channel, and the roles file can fix a channel's password up front.  A real
daemon, the real blocking client.
"""

from __future__ import annotations

import json
import os

from twisted.trial.unittest import TestCase

import lttx

from .common import Daemon
from .oldclient import legacy_daemon
from .test_legacy_integration import raw_handshake

ROLES = {
    "tokens": [
        {"name": "admin", "token": "admin-token", "rights": ["all"]},
        {"name": "feed", "token": "feed-token", "rights": ["subscribe:hq_*"]},
        {"name": "feed2", "token": "feed2-token", "rights": ["subscribe:hq_*"]},
        {"name": "desk", "token": "desk-token", "rights": ["subscribe:hq_ticks"]},
        {"name": "ops", "token": "ops-token", "rights": ["subscribe:fix_*", "subscribe:hq_*"]},
    ],
    "channels": {"fix_*": {"password": "s3cret"}},
}


class RolesChannelPasswordTests(TestCase):
    timeout = 60

    def setUp(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "tokens.json")
        with open(path, "w") as f:
            json.dump(ROLES, f)
        self.daemon = Daemon(self, "--token-file", path, token=None)

    def client(self, token: str) -> lttx.client.Client:
        client = self.daemon.connect(token=token)
        self.addCleanup(client.close)
        return client

    def test_a_password_set_by_a_pattern_right_does_not_lock_out_admin(self) -> None:
        """feed (subscribe:hq_*) subscribes first with "evil": admin (all) and desk
        (subscribe:hq_ticks) still subscribe without it; feed2 (hq_* too) must give it."""
        self.client("feed-token").subscribe("hq_ticks", password="evil")
        self.client("admin-token").subscribe("hq_ticks")
        self.client("desk-token").subscribe("hq_ticks")
        feed2 = self.client("feed2-token")
        self.assertRaises(lttx.AuthError, feed2.subscribe, "hq_ticks")
        feed2.subscribe("hq_ticks", password="evil")

    def test_the_roles_file_fixes_a_channel_password(self) -> None:
        """fix_orders has the roles file's password: its first subscriber cannot set
        another (nothing is subscribed), every token but exempt ones must give it."""
        ops = self.client("ops-token")
        self.assertRaises(lttx.AuthError, ops.subscribe, "hq_x@fix_orders", password="evil")
        self.assertRaises(lttx.AuthError, ops.subscribe, "fix_orders")
        ops.subscribe("fix_orders", password="s3cret")
        self.client("admin-token").subscribe("fix_orders")  # exempt: all
        self.assertRaises(lttx.PermissionDenied, self.client("feed-token").subscribe,
                          "fix_orders", password="s3cret")  # no right on fix_* at all


class LegacyPortChannelPasswordTests(TestCase):
    """The legacy port's ``push_mode`` applies the same exemption as the native
    subscribe (it did not before: a password set by feed locked admin out there)."""

    def setUp(self) -> None:
        folder = self.mktemp()
        os.makedirs(folder)
        path = os.path.join(folder, "tokens.json")
        with open(path, "w") as f:
            json.dump(ROLES, f)
        self.daemon, self.port = legacy_daemon(self, "--token-file", path, token=None)

    def client(self, token: str) -> lttx.client.Client:
        client = self.daemon.connect(token=token)
        self.addCleanup(client.close)
        return client

    def push_mode(self, token: str, channel: str, pwd: str = "") -> dict:
        s, answer = raw_handshake(self.port, {"con_type": "push_mode", "who": channel,
                                              "pwd": pwd, "tocken": token})
        self.addCleanup(s.close)
        return json.loads(answer)

    def test_the_legacy_port_exempts_like_the_native_one(self) -> None:
        """feed sets "evil" on hq_ticks: admin (all) and desk (subscribe:hq_ticks) subscribe
        on the legacy port without it; feed2 (hq_* too) is refused, then gives it."""
        self.client("feed-token").subscribe("hq_ticks", password="evil")
        self.assertEqual(self.push_mode("admin-token", "hq_ticks")["code"], 0)
        self.assertEqual(self.push_mode("desk-token", "hq_ticks")["code"], 0)
        refused = self.push_mode("feed2-token", "hq_ticks")
        self.assertEqual(refused["code"], -1)
        self.assertIn("wrong password", refused["msg"])
        self.assertEqual(self.push_mode("feed2-token", "hq_ticks", "evil")["code"], 0)
