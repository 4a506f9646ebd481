"""Loaders by name: the built-ins, anything registered at run time, ``module:function``, and entry points.

A user's loader is treated exactly like ours: ``get_loader("mypkg.loaders:fast")`` or an entry point in group
``mali_hil.loaders`` may name a ``Loader`` (with declared bounds) or a plain callable
``f(checkpoint, device, options) -> dict`` (wrapped, bounds undeclared: the property suite then judges its memory
against ``base.default_bound``). Built-in modules are imported on first use, so listing options or building a
``LoadOptions`` never imports tinygrad.
"""

from __future__ import annotations

import importlib
from importlib.metadata import EntryPoint, entry_points
from typing import Any

from mali_hil.harness.loaders import BUILTIN_LOADERS, BUILTIN_NAMES, ENTRY_POINT_GROUP
from mali_hil.harness.loaders.base import Loader, LoaderError

__all__ = ["BUILTIN_NAMES", "ENTRY_POINT_GROUP", "as_loader", "available", "get_loader", "register"]

_registry: dict[str, Loader] = {}
_builtins_loaded = False
_frozen_entry_points: tuple[EntryPoint, ...] | None = None


def freeze_entry_points() -> None:
    """Read the group's entry points once, for good, in a process that resolves loaders many times over the same
    installed packages: the worker, whose job children would otherwise each scan every distribution (15 ms a job)."""
    global _frozen_entry_points
    _frozen_entry_points = tuple(entry_points(group=ENTRY_POINT_GROUP))


def _entry_points() -> tuple[EntryPoint, ...]:
    if _frozen_entry_points is not None:
        return _frozen_entry_points
    return tuple(entry_points(group=ENTRY_POINT_GROUP))


def register(loader: Loader) -> Loader:
    """Add ``loader`` under its name; a name can be registered once."""
    _load_builtins()
    return _add(loader)


def _add(loader: Loader) -> Loader:
    if not isinstance(loader, Loader):
        raise LoaderError(f"register() takes a Loader, got {type(loader).__name__}; wrap functions with as_loader()")
    if ":" in loader.name or not loader.name:
        raise LoaderError(f"loader name {loader.name!r} must be non-empty and contain no ':' (that means module:attr)")
    if loader.name in _registry:
        raise LoaderError(f"a loader named {loader.name!r} is already registered; pick another name")
    _registry[loader.name] = loader
    return loader


def _load_builtins() -> None:
    global _builtins_loaded
    if _builtins_loaded:
        return
    _builtins_loaded = True  # set first: a failing import must not re-register half the built-ins next time
    for name, where in BUILTIN_LOADERS.items():
        loader = _import_attr(where)
        if not isinstance(loader, Loader) or loader.name != name:
            raise LoaderError(f"built-in loader {name!r} at {where} is {loader!r}, not a Loader named {name!r}")
        _add(loader)


def available() -> tuple[str, ...]:
    """Names ``get_loader`` resolves without a ``module:`` path: registered loaders, then entry points."""
    _load_builtins()
    extra = sorted(ep.name for ep in _entry_points() if ep.name not in _registry)
    return (*_registry, *extra)


def as_loader(obj: Any, name: str) -> Loader:
    """A ``Loader`` as is; a plain callable ``f(checkpoint, device, options) -> dict`` wrapped, bounds undeclared."""
    if isinstance(obj, Loader):
        return obj
    if callable(obj):
        _check_signature(obj, name)
        doc = (getattr(obj, "__doc__", None) or "").strip().splitlines()
        return Loader(name=name, load=obj, description=doc[0] if doc else f"external loader {name}")
    raise LoaderError(f"{name!r} is a {type(obj).__name__}, not a Loader or a callable f(checkpoint, device, options)")


def _check_signature(obj: Any, name: str) -> None:
    """A loader is called as ``f(checkpoint, device, options)``: refuse a callable that cannot be, before any job
    (``os:system`` names a callable too: ``--loader`` is a plugin point that runs code, like pytest's ``-p``)."""
    import inspect

    try:
        signature = inspect.signature(obj)
    except (TypeError, ValueError):
        return  # some builtins have no signature to read: they are judged by the call
    try:
        signature.bind(None, None, None)
    except TypeError:
        raise LoaderError(
            f"loader {name!r} takes {signature}, but a loader is called as f(checkpoint, device, options)"
        ) from None


def get_loader(spec: str | Loader) -> Loader:
    """Resolve a built-in or registered name, ``module:attr``, or an entry-point name of ``mali_hil.loaders``."""
    if isinstance(spec, Loader):
        return spec
    _load_builtins()
    if ":" in spec:
        return as_loader(_import_attr(spec), spec)
    matches = [ep for ep in _entry_points() if ep.name == spec]
    if spec in _registry:
        if matches:
            raise LoaderError(
                f"loader {spec!r} is both built in and an entry point of {matches[0].value}; rename the entry point"
            )
        return _registry[spec]
    if len(matches) > 1:
        raise LoaderError(f"entry point {spec!r} is declared {len(matches)} times in group {ENTRY_POINT_GROUP}")
    if matches:
        try:
            target = matches[0].load()
        except Exception as exc:
            raise LoaderError(f"entry point {spec!r} ({matches[0].value}) failed to import: {exc}") from exc
        return as_loader(target, spec)
    raise LoaderError(
        f"unknown loader {spec!r}; available: {', '.join(available())}; or give module:function of your own"
    )


def _import_attr(spec: str) -> Any:
    module_name, _, attr_path = spec.partition(":")
    if not module_name or not attr_path:
        raise LoaderError(f"loader {spec!r} is not module:function, e.g. 'mypkg.loaders:load_fast'")
    try:
        obj: Any = importlib.import_module(module_name)
    except ImportError as exc:
        hint = ""
        if isinstance(exc, ModuleNotFoundError):  # workers run with python -P: the current folder is not searched
            from mali_hil.harness.worker.protocol import LOADER_PATH_ENV

            hint = f"; install it, or name its folder in {LOADER_PATH_ENV} (workers skip the current folder)"
        raise LoaderError(f"loader {spec!r}: cannot import module {module_name!r} ({exc}){hint}") from exc
    except Exception as exc:  # the user's module failed while importing (a SyntaxError, its own code): its fault
        raise LoaderError(f"loader {spec!r}: importing {module_name!r} failed: {type(exc).__name__}: {exc}") from exc
    for part in attr_path.split("."):
        if not hasattr(obj, part):
            raise LoaderError(f"loader {spec!r}: {module_name} has no attribute {attr_path!r}")
        obj = getattr(obj, part)
    return obj
