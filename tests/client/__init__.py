"""Tests of :mod:`lttx.client`, a module each as in the package."""
