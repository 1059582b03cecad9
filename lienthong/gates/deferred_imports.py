"""Modules that great-expectations imports and our gates never use, imported only when used.

great-expectations 1.x imports every core expectation as it is imported itself, and one of them
(KL divergence) imports altair and scipy.stats at the top of its module: 81 MB and 2.7 s of every
process that runs a gate (measured: the suite gate built in 6.7 s and 144 MB, in 4.0 s and 61 MB
with these deferred), for expectations no suite of ours names. An agency's suite that does name one
still works: its first use imports the real module.
"""

from __future__ import annotations

import importlib
import importlib.util
import sys
import types
from importlib.machinery import ModuleSpec
from typing import Any

UNUSED_BY_OUR_SUITES = ("scipy.stats", "altair")


class _Deferred(types.ModuleType):
    """Stands in ``sys.modules`` for a module until one of its attributes is read.

    Not ``importlib.util.LazyLoader``: the import system reads ``__spec__`` from whatever it finds in
    ``sys.modules``, and a lazy module imports itself on that read, at the very ``import`` that
    should not load it. A stand-in answers the attributes every module has itself (``__spec__``,
    ``__name__``), and any other read goes to the real module, which replaces the stand-in in
    ``sys.modules`` (and, for a submodule, on its package) the first time.
    """

    def __init__(self, spec: ModuleSpec) -> None:
        super().__init__(spec.name)
        self.__spec__ = spec

    def __getattr__(self, attribute: str) -> Any:
        if sys.modules.get(self.__name__) is self:
            del sys.modules[self.__name__]
        return getattr(importlib.import_module(self.__name__), attribute)


def defer() -> None:
    """Put a stand-in for each module not imported yet; call before importing great-expectations."""
    for name in UNUSED_BY_OUR_SUITES:
        if name in sys.modules:
            continue
        spec = importlib.util.find_spec(name)  # imports a submodule's package (scipy's: 1 MB)
        if spec is not None:
            sys.modules[name] = _Deferred(spec)
