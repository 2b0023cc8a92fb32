"""Which implementation a selector module uses: the compiled one or its pure-Python twin.

One rule for every ``native/<name>.py`` selector: the Cython module is used unless
``EDGEGOV_PURE`` is set (to anything but ``0``) or it was not built. Falling back
because it was not built is logged once per module: the twins are 30-100x slower,
and an operator should know the gateway is running without its compiled hot paths.
"""

from __future__ import annotations

import importlib
import logging
import os

__all__ = ["PURE_REQUESTED", "compiled_available"]

PURE_REQUESTED = os.environ.get("EDGEGOV_PURE", "") not in ("", "0")


def compiled_available(name: str) -> bool:
    """True if ``native.<name>`` should be used (built, and not overridden)."""
    if PURE_REQUESTED:
        return False
    try:
        importlib.import_module(f"native.{name}")
    except ImportError as e:
        logging.getLogger("edgegov.native").warning(
            "native.%s is not built (%s); using its pure-Python twin, which is much slower. "
            "Reinstall with a C compiler present (pip install .) to build it.",
            name,
            e,
        )
        return False
    return True
