"""
The package's layout holds: imports flow one way (the contracts in
setup.cfg, checked by import-linter), no module grows past the size a reader
takes in at once, and every module says what it owns.
"""

from __future__ import annotations

import ast
import os
import subprocess
import sys
from pathlib import Path

from twisted.trial.unittest import SynchronousTestCase

import lttx

PACKAGE = Path(lttx.__file__).resolve().parent
ROOT = PACKAGE.parent
#: "No module over about 600 lines" (issue 12): the slack is the "about".
MAX_MODULE_LINES = 650


def modules() -> list[Path]:
    return sorted(p for p in PACKAGE.rglob("*.py") if "__pycache__" not in p.parts)


class LayoutTests(SynchronousTestCase):
    def test_import_contracts_are_kept(self) -> None:
        """lint-imports finds every contract of setup.cfg kept (layers, no circles)."""
        if not (ROOT / "setup.cfg").exists():
            self.skipTest("not run from a checkout: setup.cfg holds the contracts")
        result = subprocess.run(
            [sys.executable, "-c", "from importlinter.cli import lint_imports_command; "
             "lint_imports_command()", "--no-cache"],
            cwd=ROOT, capture_output=True, text=True, timeout=120,
            env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.assertEqual(result.returncode, 0, result.stdout[-3000:] + result.stderr[-2000:])
        self.assertIn("0 broken", result.stdout)

    def test_no_module_is_over_the_size_limit(self) -> None:
        """Each module of lttx/ has at most about 600 lines."""
        long = {str(p.relative_to(ROOT)): n for p in modules()
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_MODULE_LINES}
        self.assertEqual(long, {})

    def test_every_module_says_what_it_owns(self) -> None:
        """Each module opens with a docstring."""
        silent = [str(p.relative_to(ROOT)) for p in modules()
                  if not ast.get_docstring(ast.parse(p.read_text(encoding="utf-8")))]
        self.assertEqual(silent, [])

    def test_the_daemon_does_not_load_the_client(self) -> None:
        """Importing the daemon's service loads no client module."""
        code = ("import sys, lttx.tap; "
                "print(sorted(m for m in sys.modules if m.startswith('lttx.client')))")
        result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                                timeout=60, env=dict(os.environ, PYTHONPATH=str(ROOT)))
        self.assertEqual(result.stdout.strip(), "[]", result.stderr[-2000:])
