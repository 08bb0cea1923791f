"""The error every lowering step raises for a model it cannot take, with the reason.

Its own module so that the steps (``graph``, ``convert``, ``relax_import``) share it without
importing each other.
"""

from __future__ import annotations


class LowerError(RuntimeError):
    """A model that cannot be lowered, with the reason."""
