"""The README's quick tour runs as written and gives the results its comments show."""

from __future__ import annotations

import ast
import re
from pathlib import Path
from typing import Any

from twisted.trial.unittest import TestCase

import lttx

from .common import Daemon

README = Path(__file__).resolve().parent.parent / "README.md"


def tour_lines() -> list[str]:
    text = README.read_text(encoding="utf-8")
    section = text.split("## A quick tour", 1)[1]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None, "no python block in the quick tour"
    return block.group(1).splitlines()


def expected_result(comment: str) -> Any:
    """The literal a comment promises (``# {'a': 1}``, ``# 200, without...``), or None."""
    for candidate in (comment, comment.split(",")[0]):
        try:
            return ("value", ast.literal_eval(candidate.strip()))
        except (ValueError, SyntaxError):
            continue
    return None


class QuickTourTests(TestCase):
    def test_quick_tour(self) -> None:
        """Each line of the tour runs; each result its comment shows is the result."""
        daemon = Daemon(self, token=None)
        namespace: dict[str, Any] = {"lttx": lttx}
        checked = 0
        for line in tour_lines():
            code, _, comment = line.partition("#")
            code = code.strip()
            if not code or code.startswith("import"):
                continue
            if code.startswith("with lttx.connect("):
                namespace["c"] = daemon.connect()
                continue
            expected = expected_result(comment) if comment else None
            if expected is None:
                exec(code, namespace)
            else:
                self.assertEqual(eval(code, namespace), expected[1], line)
                checked += 1
        self.assertGreaterEqual(checked, 7)
