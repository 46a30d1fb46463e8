"""Tests of :mod:`lttx.storage`, a module each as in the package."""
