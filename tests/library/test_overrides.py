"""``@override`` wherever a method of lit_nnopt overrides one of a base class, library and application alike.

``typing_extensions.override`` sets ``__override__`` on the function it decorates; a reader (and
a type checker) then knows the method is a hook or an extension point of the base class, and a
renamed or misspelt hook is caught instead of silently never being called.
"""

from __future__ import annotations

import importlib
import inspect
import pkgutil
from collections.abc import Iterator

import pytest

import lit_nnopt

# `__main__` runs the CLI when imported; the template is a cookiecutter folder, not a package.
_NOT_IMPORTED = ("lit_nnopt.__main__", "project_template")


def _modules() -> list[str]:
    names = [
        module.name
        for module in pkgutil.walk_packages(lit_nnopt.__path__, prefix="lit_nnopt.")
        if not any(part in module.name for part in _NOT_IMPORTED)
    ]
    return ["lit_nnopt", *sorted(names)]


def _classes() -> list[type]:
    """Every class defined at the top of a lit_nnopt module."""
    found = {}
    for name in _modules():
        module = importlib.import_module(name)
        for value in vars(module).values():
            if inspect.isclass(value) and value.__module__ == name:
                found[f"{name}.{value.__qualname__}"] = value
    return [found[key] for key in sorted(found)]


CLASSES = _classes()


def _functions(value: object) -> list[object]:
    """The functions a class attribute holds: a method's, a property's getter, a static or class method's."""
    if isinstance(value, property):
        return [value.fget]
    if isinstance(value, (staticmethod, classmethod)):
        return [value.__func__]
    return [value] if inspect.isfunction(value) else []


def _methods(cls: type) -> Iterator[tuple[str, object]]:
    """The methods written in the body of ``cls``, dunder methods (``__init__``...) aside.

    Not what a metaclass puts there (Enum copies its base's ``_generate_next_value_`` on some
    Pythons), nor an alias (``before_fit = _check_ckpt_path``): those are not methods written here.
    """
    for name, value in vars(cls).items():
        if name.startswith("__") and name.endswith("__"):
            continue
        for function in _functions(value):
            written_here = getattr(function, "__qualname__", "") == f"{cls.__qualname__}.{name}"
            if written_here:
                yield name, function


def _overridden(cls: type, name: str) -> bool:
    return any(name in vars(base) for base in cls.__mro__[1:])


def test_the_package_has_classes_that_override_host_methods():
    # A guard for the tests below: without the classes they would pass vacuously.
    names = {cls.__name__ for cls in CLASSES}
    assert {"MNISTClassifier", "MNISTDataModule", "LitNNOptCLI", "AutoWandbLogger", "RunPictures", "NaNGuard"} <= names
    assert len(CLASSES) >= 40


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_every_overriding_method_says_override(cls: type):
    missing = [
        name for name, function in _methods(cls) if _overridden(cls, name) and not hasattr(function, "__override__")
    ]
    assert not missing, f"{cls.__qualname__} overrides {missing} without @override"


@pytest.mark.parametrize("cls", CLASSES, ids=lambda cls: f"{cls.__module__}.{cls.__qualname__}")
def test_override_marks_only_methods_that_override(cls: type):
    # A hook renamed in the base class, or misspelt here, would otherwise never be called.
    stray = [
        name for name, function in _methods(cls) if hasattr(function, "__override__") and not _overridden(cls, name)
    ]
    assert not stray, f"{cls.__qualname__}.{stray} say @override but no base class has them"
