"""``python -m lit_nnopt`` and ``lit-nnopt``: LightningCLI's subcommands, ``compare``, ``tune``, ``new``, ``bench``.

Every command reports bad input as one paragraph on stderr (``LIT_NNOPT_DEBUG=1`` shows the
traceback instead) and exits non-zero: 1 for a problem found while running, 2 for a command
line or config file that cannot be parsed, 3 for a ``fit`` that ran to its end but diverged or
stayed at chance (its files are written; see ``lit_nnopt.app.reports.run_health``), 130 after
Ctrl-C and 143 after SIGTERM.
"""

from __future__ import annotations

import importlib.util
import os
import signal
import sys

DEBUG_ENV = "LIT_NNOPT_DEBUG"
# Import names of the `cli` extra: the library needs none of them.
APPLICATION_MODULES = {
    "jsonargparse": "jsonargparse[signatures]",
    "docstring_parser": "jsonargparse[signatures]",
    "rich": "rich",
    "wandb": "wandb",
    "matplotlib": "matplotlib",
    "cookiecutter": "cookiecutter",
    "optuna": "optuna",
}


def missing_application_packages() -> list[str]:
    """The packages of the ``cli`` extra that are not installed."""
    missing = {package for module, package in APPLICATION_MODULES.items() if importlib.util.find_spec(module) is None}
    return sorted(missing)


def main(argv: list[str] | None = None) -> None:
    """Entry point; ``argv`` defaults to ``sys.argv[1:]``."""
    command_line = list(sys.argv[1:] if argv is None else argv)
    command = command_line[0] if command_line else None
    missing = missing_application_packages()
    if missing:
        sys.stderr.write(
            f"lit_nnopt: error: the lit_nnopt command needs the application's packages, and {', '.join(missing)} "
            '{} not installed. Install them with `pip install "lit_nnopt[cli]"` (from a clone: '
            '`pip install -e ".[cli]"`). The library alone (`import lit_nnopt`, `lit_nnopt.callbacks`) '
            "works without them.\n".format("is" if len(missing) == 1 else "are")
        )
        sys.exit(1)
    from lit_nnopt.app.config_files import ConfigFileError, check_config_file, config_files
    from lit_nnopt.app.errors import explain_error

    try:
        for path in config_files(command_line):
            check_config_file(path)
        if command == "compare":
            from lit_nnopt.app.compare import main as compare_main

            compare_main(command_line[1:])
        elif command == "tune":
            from lit_nnopt.app.tune import main as tune_main

            tune_main(command_line[1:])
        elif command == "new":
            from lit_nnopt.app.new_project import main as new_main

            new_main(command_line[1:])
        elif command == "bench":
            from lit_nnopt.app.bench import main as bench_main

            bench_main(command_line[1:])
        else:
            _run_lightning_cli(argv)
    except KeyboardInterrupt:
        sys.stderr.write("lit_nnopt: interrupted.\n")
        sys.exit(130)
    except ConfigFileError as error:  # exit status 2, as for the other problems LightningCLI's parser finds
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"lit_nnopt: error: {error}\n")
        sys.exit(2)
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"lit_nnopt: error: {explain_error(error)}\n(Set {DEBUG_ENV}=1 to see the traceback.)\n")
        sys.exit(1)


def _run_lightning_cli(argv: list[str] | None) -> None:
    """fit, validate, test or predict; imported only here, so that `new` and `compare` start at once."""
    from lightning.pytorch.utilities.exceptions import SIGTERMException

    from lit_nnopt.app.cli import LitNNOptCLI
    from lit_nnopt.app.reports import DID_NOT_LEARN_EXIT

    try:
        cli = LitNNOptCLI(args=argv)  # None: LightningCLI reads sys.argv itself
    except SIGTERMException as stop:  # a SystemExit without a code (status 0) unless InterruptCheckpoint set one
        sys.exit(stop.code or 128 + signal.SIGTERM)
    _close_process_group()
    if cli.did_not_learn:
        sys.exit(DID_NOT_LEARN_EXIT)


def _close_process_group() -> None:
    """Destroy the DDP process group before exiting; Lightning leaves it open.

    Left open, its threads can outlive the interpreter's shutdown and abort the process
    ("terminate called without an active exception"), which fails the whole DDP run.
    """
    import torch

    if torch.distributed.is_available() and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()
