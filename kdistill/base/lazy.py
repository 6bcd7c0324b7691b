"""Run a function right after a library is imported, whoever imports it, without importing it first.

    after_import("transformers", register_fractal)   # now if transformers is loaded, else after its import

`import kdistill` and building the CLI parser stay light (no torch, no transformers): what must happen
once transformers exists (registering kdistill's model classes, hiding its progress bars) waits for it.
"""
from __future__ import annotations

import importlib.util
import logging
import sys

_PENDING: dict[str, list] = {}  # top-level module name -> functions to call after its import


def _run(name: str, fns: list) -> None:
    for fn in fns:
        try:
            fn()
        except Exception as e:  # noqa: BLE001 - a hook must never break the user's import
            what = getattr(fn, "__name__", fn)
            logging.getLogger("kdistill").debug("after importing %s: %s failed: %s", name, what, e)


def after_import(name: str, fn) -> None:
    """Call `fn()` once the top-level module `name` is imported: now if it already is."""
    if name in sys.modules:
        _run(name, [fn])
        return
    _PENDING.setdefault(name, []).append(fn)
    if _FINDER not in sys.meta_path:
        sys.meta_path.insert(0, _FINDER)


class _AfterImport:
    """A meta-path finder that finds nothing itself: it wraps the real loader of a pending module."""

    def find_spec(self, name, path=None, target=None):
        fns = _PENDING.pop(name, None)
        if fns is None:
            return None
        if not _PENDING:
            sys.meta_path.remove(self)
        spec = importlib.util.find_spec(name)  # the other finders (this one has nothing pending for it now)
        if spec is None or not hasattr(spec.loader, "exec_module"):
            return spec
        exec_module = spec.loader.exec_module

        def exec_then_run(module):
            exec_module(module)
            _run(name, fns)

        spec.loader.exec_module = exec_then_run
        return spec


_FINDER = _AfterImport()
