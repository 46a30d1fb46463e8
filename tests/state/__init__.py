"""Tests of :mod:`lttx.state`, a module each as in the package."""
