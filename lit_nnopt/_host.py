"""The Lightning a callback runs in: ``lightning.pytorch`` or the separately installed ``pytorch_lightning``.

The two packages are copies of one code base with distinct classes. A callback that subclasses
only ``lightning.pytorch.Callback`` is refused by ``pytorch_lightning.Trainer`` ("Expected a
parent"), and an ``isinstance`` check against one namespace's class is false for the other's
objects. lit_nnopt's callbacks therefore subclass the ``Callback`` of every namespace that is
installed, and look classes up in all of them.

Private: the names here may change without notice.
"""

from __future__ import annotations

import importlib
import importlib.util
from types import ModuleType

import lightning.pytorch


def _installed_namespaces() -> tuple[ModuleType, ...]:
    namespaces = [lightning.pytorch]
    # Only where it is installed: importing it is what a pytorch_lightning project does anyway.
    if importlib.util.find_spec("pytorch_lightning") is not None:
        namespaces.append(importlib.import_module("pytorch_lightning"))
    return tuple(namespaces)


NAMESPACES = _installed_namespaces()


class Callback(*(namespace.Callback for namespace in NAMESPACES)):  # type: ignore[misc]
    """The base of lit_nnopt's callbacks: a ``Callback`` of each installed Lightning namespace."""


def host_classes(module: str, name: str) -> tuple[type, ...]:
    """The class ``module.name`` (relative to a namespace) of every installed namespace that has it.

    ``host_classes("callbacks", "ModelCheckpoint")`` is Lightning's ``ModelCheckpoint`` of both
    namespaces, for an ``isinstance`` check that holds whichever a project imports.
    """
    classes = []
    for namespace in NAMESPACES:
        found = getattr(importlib.import_module(f"{namespace.__name__}.{module}"), name, None)
        if isinstance(found, type):
            classes.append(found)
    return tuple(classes)


def namespace_of(obj: object) -> ModuleType:
    """The namespace of the class of ``obj`` (or of its nearest base from one); ``lightning.pytorch`` if none."""
    tops = {namespace.__name__.split(".")[0]: namespace for namespace in NAMESPACES}
    for cls in type(obj).__mro__:
        namespace = tops.get(cls.__module__.split(".")[0])
        if namespace is not None:
            return namespace
    return lightning.pytorch
