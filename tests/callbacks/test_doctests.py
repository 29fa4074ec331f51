"""Every callback's docstring example runs, as a doctest, so the examples stay true."""

from __future__ import annotations

import doctest
import importlib

import pytest

CALLBACK_MODULES = [
    "lit_nnopt.callbacks.early_stopping",
    "lit_nnopt.callbacks.exact_resume",
    "lit_nnopt.callbacks.grad_norm",
    "lit_nnopt.callbacks.gradient_clipping",
    "lit_nnopt.callbacks.interrupt_checkpoint",
    "lit_nnopt.callbacks.nan_guard",
    "lit_nnopt.callbacks.plateau",
    "lit_nnopt.callbacks.steps_per_execution",
]


@pytest.mark.parametrize("name", CALLBACK_MODULES)
def test_the_docstring_examples_run(name, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # where a Trainer without default_root_dir would write
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS)
    assert result.attempted > 0, f"{name} has no example"
    assert result.failed == 0, f"{result.failed} of {result.attempted} examples of {name} failed (printed above)"


def test_every_exported_callback_module_is_listed():
    import lit_nnopt.callbacks as callbacks

    ours = {getattr(callbacks, name).__module__ for name in callbacks.__all__}
    assert ours - {"lightning.pytorch.callbacks.lr_monitor"} == set(CALLBACK_MODULES)
