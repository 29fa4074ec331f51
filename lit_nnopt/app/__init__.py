"""The application built on the library: the ``python -m lit_nnopt`` command and what it writes.

The CLI (:mod:`lit_nnopt.app.cli`), ``compare``, ``new`` (the project template) and ``bench``;
the run summary, pictures, predictions file, progress bar and W&B logger that the CLI adds to
every run. It needs the ``cli`` extra (``pip install "lit_nnopt[cli]"``); the library
(``lit_nnopt``, ``lit_nnopt.callbacks``, ``lit_nnopt.optim``) never imports it.
"""

from importlib import import_module
from typing import Any

# Imported on first use: `python -m lit_nnopt new` needs neither Lightning nor W&B.
_EXPORTS = {
    "AutoWandbLogger": "lit_nnopt.app.loggers",
    "LitNNOptCLI": "lit_nnopt.app.cli",
    "PredictionWriter": "lit_nnopt.app.predictions",
    "RunPictures": "lit_nnopt.app.run_pictures",
    "RunSummary": "lit_nnopt.app.reports",
    "TrainingClock": "lit_nnopt.app.training_clock",
}
__all__ = sorted(_EXPORTS)  # provided by __getattr__


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'lit_nnopt.app' has no attribute {name!r}")
    return getattr(import_module(_EXPORTS[name]), name)


def __dir__() -> list[str]:
    return sorted([*globals(), *__all__])
