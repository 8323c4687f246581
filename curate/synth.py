"""Shapes world: the public API. The code lives in :mod:`curate.shapes`; import from either."""

from __future__ import annotations

from curate.shapes import *  # noqa: F403
from curate.shapes import __all__  # noqa: F401
