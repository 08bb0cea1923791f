"""Imported only if something imports a module an archive names: it leaves the marker."""

import os

from tests.fuzz.sandbox import TRIPWIRE_ENV

if TRIPWIRE_ENV in os.environ:
    os.makedirs(os.environ[TRIPWIRE_ENV], exist_ok=True)


def make() -> dict:
    return {}
