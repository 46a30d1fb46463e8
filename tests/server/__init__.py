"""Tests of :mod:`lttx.server`, a module each as in the package."""
