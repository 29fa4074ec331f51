"""The command line: LightningCLI with lit_nnopt's defaults, plus ``compare`` and ``new``.

``python -m lit_nnopt fit --config configs/adam.yaml`` goes YAML -> LightningCLI ->
MNISTDataModule / MNISTClassifier / callbacks -> Trainer. Everything a config can set is
listed by ``python -m lit_nnopt fit --help``.
"""

from __future__ import annotations

import os
import sys
from typing import Any

from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
    RichModelSummary,
    RichProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI

from lit_nnopt.data import MNISTDataModule
from lit_nnopt.model import MNISTClassifier
from lit_nnopt.plots import RunPictures
from lit_nnopt.reports import RunSummary

DEBUG_ENV = "LIT_NNOPT_DEBUG"
EXTRA_COMMANDS = {
    "compare": "Train several configs and compare them in a table and a plot.",
    "new": "Start a new Lightning project from lit_nnopt's cookiecutter template.",
}


def default_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """Progress bar, model summary, LR monitor, run summary and pictures, unless the config has its own."""
    given = list(trainer_config.get("callbacks") or [])
    defaults: list[Callback] = []
    if trainer_config.get("enable_progress_bar", True) is not False and not _has(given, ProgressBar):
        defaults.append(RichProgressBar(refresh_rate=_progress_refresh_rate()))
    if trainer_config.get("enable_model_summary", True) is not False and not _has(given, ModelSummary):
        defaults.append(RichModelSummary(max_depth=2))
    if trainer_config.get("logger", True) not in (False, None) and not _has(given, LearningRateMonitor):
        defaults.append(LearningRateMonitor(log_momentum=True, log_weight_decay=True))
    if not _has(given, RunSummary):
        defaults.append(RunSummary())
    if not _has(given, RunPictures):
        defaults.append(RunPictures())
    return given + defaults


def _has(callbacks: list[Callback], kind: type) -> bool:
    return any(isinstance(callback, kind) for callback in callbacks)


def _progress_refresh_rate() -> int:
    # Redrawing the bar costs more than a training step of the MLP; 25 steps is still smooth.
    return 25 if sys.stdout.isatty() else 100


class LitNNOptCLI(LightningCLI):
    """LightningCLI for MNISTClassifier and MNISTDataModule with lit_nnopt's defaults.

    The top-level ``optimizer:`` and ``lr_scheduler:`` keys take any ``torch.optim`` class
    (or any importable subclass) and are handed to the model as plain ``class_path`` dicts,
    so checkpoints keep only primitive hyperparameters.
    """

    def __init__(self, args: Any = None, **kwargs: Any) -> None:
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"].setdefault("default_root_dir", "runs")
        # W&B, online with a key and offline without; `--trainer.logger false` turns logging off.
        kwargs["trainer_defaults"].setdefault("logger", {"class_path": "lit_nnopt.loggers.AutoWandbLogger"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault("parser_kwargs", {"epilog": _epilog()})
        super().__init__(MNISTClassifier, MNISTDataModule, args=args, **kwargs)

    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_optimizer_args(link_to="model.optimizer")
        parser.add_lr_scheduler_args(link_to="model.lr_scheduler")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}-{val_acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    def before_instantiate_classes(self) -> None:
        config = self.config.get(str(self.subcommand), self.config)
        optimizer = config.get("optimizer")
        lr = _init_arg(optimizer, "lr")
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(f"`optimizer.init_args.lr` must be a positive number, got {lr!r}. Set e.g. `--optimizer.lr 0.001`.")

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        trainer_config = {**self._get(self.config_init, "trainer", default={}), **kwargs}
        return super().instantiate_trainer(**{**kwargs, "callbacks": default_callbacks(trainer_config)})


def _init_arg(namespace: Any, key: str) -> Any:
    if not namespace:
        return None
    init_args = namespace.get("init_args") if hasattr(namespace, "get") else None
    return init_args.get(key) if init_args is not None and hasattr(init_args, "get") else None


def _epilog() -> str:
    lines = ["also:"] + [f"  {name:<10}{text}" for name, text in EXTRA_COMMANDS.items()]
    return "\n".join(lines + ["", "Example: python -m lit_nnopt fit --config configs/adam.yaml"])


class ConfigError(ValueError):
    """A configuration value is out of range; raised before anything is trained or written."""


def main(argv: list[str] | None = None) -> None:
    """Entry point of ``python -m lit_nnopt`` and ``lit-nnopt``; ``argv`` defaults to ``sys.argv[1:]``."""
    command_line = list(sys.argv[1:] if argv is None else argv)
    command = command_line[0] if command_line else None
    try:
        if command == "compare":
            from lit_nnopt.compare import main as compare_main

            compare_main(command_line[1:])
        elif command == "new":
            from lit_nnopt.new_project import main as new_main

            new_main(command_line[1:])
        else:
            LitNNOptCLI(args=argv)  # None: LightningCLI reads sys.argv itself
    except KeyboardInterrupt:
        sys.stderr.write("lit_nnopt: interrupted.\n")
        sys.exit(130)
    except Exception as error:
        if os.environ.get(DEBUG_ENV):
            raise
        sys.stderr.write(f"lit_nnopt: error: {error}\n(Set {DEBUG_ENV}=1 to see the traceback.)\n")
        sys.exit(1)
