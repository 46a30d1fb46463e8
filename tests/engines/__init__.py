"""Tests of :mod:`lttx.engines`, a module each as in the package."""
