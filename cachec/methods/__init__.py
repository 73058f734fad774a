"""The cache methods, one module each, and their registry.

A method module defines a :class:`~cachec.methods.base.Method` subclass (typed ``Params``, a
controller, a plan) and decorates it with :func:`register`. Every module of this package is
imported when the registry is first read, so adding a method is adding one file here (plus its
tests): the spec parser, ``cachec policies``, the planner and the runtime find it through
:data:`METHODS`.
"""

from __future__ import annotations

import importlib
import pkgutil

from .base import Method

_REGISTRY: dict[str, type[Method]] = {}


def register(cls: type[Method]) -> type[Method]:
    """Class decorator: make ``cls`` known by its ``name``."""
    if cls.name in _REGISTRY and _REGISTRY[cls.name] is not cls:
        raise ValueError(f"two cache methods are named {cls.name!r}")
    _REGISTRY[cls.name] = cls
    if "METHODS" in globals():  # registered after discovery (a plugin, a test): known from now on
        METHODS[cls.name] = cls
    return cls


def _discover() -> dict[str, type[Method]]:
    for mod in pkgutil.iter_modules(__path__):
        if mod.name != "base" and not mod.name.startswith("_"):
            importlib.import_module(f"{__name__}.{mod.name}")
    return dict(sorted(_REGISTRY.items(), key=lambda kv: (kv[1].rank, kv[0])))


METHODS: dict[str, type[Method]] = _discover()
