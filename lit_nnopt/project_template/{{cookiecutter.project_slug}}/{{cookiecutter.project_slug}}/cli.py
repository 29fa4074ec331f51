"""The command line: ``python -m {{ cookiecutter.project_slug }} fit --config configs/default.yaml``.

LightningCLI builds the Trainer, the Classifier and the DataModule from the YAML; every key
can be overridden on the command line (``--model.hidden_size 256``, ``--trainer.max_epochs 5``)
and ``python -m {{ cookiecutter.project_slug }} fit --help`` lists them all.
"""

from __future__ import annotations

from lightning.pytorch import LightningDataModule
from lightning.pytorch.cli import LightningCLI

from {{ cookiecutter.project_slug }}.model import Classifier


def build_cli(args: list[str] | None = None, run: bool = True) -> LightningCLI:
    """Parse ``args`` (default: ``sys.argv[1:]``), build the objects and, if ``run``, run the subcommand.

    Without ``run`` there is no subcommand: ``build_cli(["--config", path], run=False)``
    only builds the trainer, model and data, as tests and notebooks want.
    """
    return LightningCLI(
        Classifier,
        LightningDataModule,  # any DataModule: the config's `data.class_path` picks one
        subclass_mode_data=True,
        args=args,
        run=run,
        trainer_defaults={"default_root_dir": "runs"},
        save_config_kwargs={"overwrite": True},
    )


def main(args: list[str] | None = None) -> None:
    """Entry point of ``python -m {{ cookiecutter.project_slug }}`` and of the ``{{ cookiecutter.project_slug }}`` script."""
    build_cli(args)
