"""The hot paths: Cython modules, each beside its pure-Python twin and a selector.

``native.policy``, ``native.verify``, ``native.frames``, ``native.cbor_scan`` and
``native.features`` are the selectors to import; each uses its compiled module
(``native._<name>``) unless ``EDGEGOV_PURE`` is set or the module is not built, and
then its twin (``native._<name>_py``). :func:`native_status` says which, and why, for
all of them; a fallback is logged once per process. This package never imports
``agent``.
"""

from native._select import (
    COMPILED_MODULES,
    PURE_REQUESTED,
    ModuleStatus,
    format_native_status,
    native_status,
)

__all__ = [
    "COMPILED_MODULES",
    "PURE_REQUESTED",
    "ModuleStatus",
    "format_native_status",
    "native_status",
]
