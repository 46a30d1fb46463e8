"""Tests of :mod:`lttx.wire`, a module each as in the package."""
