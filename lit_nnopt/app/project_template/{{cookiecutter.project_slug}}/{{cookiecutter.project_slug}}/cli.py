"""The command line: ``python -m {{ cookiecutter.project_slug }} fit --config configs/default.yaml``.

LightningCLI builds the Trainer, the Classifier and the DataModule from the YAML; every key
can be overridden on the command line (``--model.hidden_size 256``, ``--trainer.max_epochs 5``)
and ``python -m {{ cookiecutter.project_slug }} fit --help`` lists them all.
"""

from __future__ import annotations

import os
import shlex
import sys
from typing import Any

from lightning.pytorch import LightningDataModule
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from {{ cookiecutter.project_slug }}.model import Classifier

DEBUG_ENV = "{{ cookiecutter.project_slug.upper() }}_DEBUG"
PROG = "python -m {{ cookiecutter.project_slug }}"


class ProjectCLI(LightningCLI):
    """LightningCLI that refuses to evaluate untrained weights and names the best checkpoint after ``fit``."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        # The command line, for the `test` command printed after `fit`: the same options, data_dir included.
        given = kwargs.get("args")
        self._args = list(sys.argv[1:]) if given is None else list(map(str, given)) if isinstance(given, list) else []
        super().__init__(*args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        # The `checkpoint:` section of the config: which checkpoints a run keeps, and under what names.
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        if self.subcommand in ("validate", "test", "predict") and not config.get("ckpt_path"):
            raise ValueError(
                f"`{self.subcommand}` needs trained weights and no --ckpt_path was given: it would score an "
                "untrained model. Give the best checkpoint of a run, which `fit` names when it ends "
                "(runs/lightning_logs/version_N/checkpoints/best-*.ckpt)."
            )

    def after_fit(self) -> None:
        checkpoint = self.trainer.checkpoint_callback
        if not self.trainer.is_global_zero or not isinstance(checkpoint, ModelCheckpoint):
            return
        if checkpoint.best_model_path:
            # EarlyStopping's restore_best_weights and this file watch the same metric: it holds the restored weights.
            print(
                f"Best checkpoint ({checkpoint.monitor} {float(checkpoint.best_model_score):.4f}): "
                f"{checkpoint.best_model_path}\n"
                f"Test it with: {command_that_tests(self._args, checkpoint.best_model_path)}"
            )


def command_that_tests(fit_args: list[str], ckpt_path: str) -> str:
    """The ``fit`` command line turned into the ``test`` of ``ckpt_path``: its config and options kept."""
    kept, skip = [], False
    for arg in fit_args:
        if skip:
            skip = False
        elif arg == "--ckpt_path":
            skip = True  # the checkpoint the fit resumed from is not the one to test
        elif not arg.startswith("--ckpt_path="):
            kept.append("test" if arg == "fit" else arg)
    return shlex.join([*PROG.split(), *kept, "--ckpt_path", ckpt_path])


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv[1:]``), build the objects and, if ``run``, run the subcommand.

    Without ``run`` there is no subcommand: ``build_cli(["--config", path], run=False)``
    only builds the trainer, model and data, as tests and notebooks want.
    """
    return ProjectCLI(
        Classifier,
        LightningDataModule,  # any DataModule: the config's `data.class_path` picks one
        subclass_mode_data=True,
        args=args,
        run=run,
        trainer_defaults={"default_root_dir": "runs"},
        save_config_kwargs={"overwrite": True},
        parser_kwargs={"prog": PROG},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m {{ cookiecutter.project_slug }}`` and of the ``{{ cookiecutter.project_slug }}`` script.

    An error is one paragraph on stderr (set ``{{ cookiecutter.project_slug.upper() }}_DEBUG=1`` for the traceback).
    """
    try:
        build_cli(args)
    except KeyboardInterrupt:
        sys.stderr.write("{{ cookiecutter.project_slug }}: interrupted.\n")
        sys.exit(130)
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"{{ cookiecutter.project_slug }}: error: {error}\n(Set {DEBUG_ENV}=1 to see the traceback.)\n")
        sys.exit(1)
