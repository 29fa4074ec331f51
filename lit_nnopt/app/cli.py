"""LitNNOptCLI: LightningCLI for MNISTClassifier and MNISTDataModule with lit_nnopt's defaults.

``python -m lit_nnopt fit --config configs/adam.yaml`` goes YAML -> LightningCLI ->
MNISTDataModule / MNISTClassifier / callbacks -> Trainer. Everything a config can set is
listed by ``python -m lit_nnopt fit --help``.
"""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import yaml
from jsonargparse import ActionConfigFile
from lightning.pytorch import Callback, Trainer
from lightning.pytorch.callbacks import (
    LearningRateMonitor,
    ModelCheckpoint,
    ModelSummary,
    ProgressBar,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import CheckpointIO
from typing_extensions import override

from lit_nnopt.app.checks import (
    check_checkpoint,
    check_hyperparameters,
    check_optimizer_settings,
    check_output_dirs,
    describe_model_override,
    init_arg,
    load_checkpoint_to_check,
)
from lit_nnopt.app.commands import EXTRA_COMMANDS
from lit_nnopt.app.config_files import config_files
from lit_nnopt.app.console import ConciseArgumentParser, LineKeepingHelpFormatter, quiet_known_noise
from lit_nnopt.app.environment import fit_threads_to_free_cpus, skip_nvml_probe_without_gpu
from lit_nnopt.app.errors import config_error
from lit_nnopt.app.model_summary import NetworkSummary
from lit_nnopt.app.predictions import PredictionWriter
from lit_nnopt.app.progress import progress_bar
from lit_nnopt.app.reports import OK, RunSummary, did_not_learn_message
from lit_nnopt.app.run_pictures import RunPictures
from lit_nnopt.app.run_placement import place_run, resume_ckpt_path
from lit_nnopt.app.runs import resume_command, test_command
from lit_nnopt.app.schedule_length import ScheduleLength
from lit_nnopt.app.study_membership import StudyMembership
from lit_nnopt.app.trial_report import TrialReport
from lit_nnopt.callbacks import InterruptCheckpoint, NaNGuard
from lit_nnopt.checkpoint_io import AtomicCheckpointIO
from lit_nnopt.data import MNISTDataModule
from lit_nnopt.model import MNISTClassifier


def default_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """The callbacks of every CLI run, each unless ``trainer_config`` gives one of its kind.

    A progress bar, a model summary, an LR monitor, the run summary, the pictures, the interrupt
    checkpoint, the prediction CSV and the check of a fixed-length schedule against the run; and,
    in a trial of ``tune`` or a seed of ``compare``, the study's name for every logger (and, in a
    trial, its report to the study).
    """
    given = list(trainer_config.get("callbacks") or [])
    defaults: list[Callback] = []
    if trainer_config.get("enable_progress_bar", True) is not False and not _has(given, ProgressBar):
        defaults.append(progress_bar(refresh_rate=_progress_refresh_rate()))
    if trainer_config.get("enable_model_summary", True) is not False and not _has(given, ModelSummary):
        defaults.append(NetworkSummary(max_depth=2))
    if trainer_config.get("logger", True) not in (False, None) and not _has(given, LearningRateMonitor):
        defaults.append(LearningRateMonitor(log_momentum=True, log_weight_decay=True))
    if not _has(given, RunSummary):
        defaults.append(RunSummary())
    if not _has(given, RunPictures):
        defaults.append(RunPictures())
    if not _has(given, InterruptCheckpoint):
        defaults.append(InterruptCheckpoint())
    if not _has(given, PredictionWriter):
        defaults.append(PredictionWriter())
    if not _has(given, ScheduleLength):
        defaults.append(ScheduleLength())
    membership = StudyMembership.from_environment()
    if membership is not None and not _has(given, StudyMembership):
        defaults.append(membership)
    report = TrialReport.from_environment()
    if report is not None and not _has(given, TrialReport):
        defaults.append(report)
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
        skip_nvml_probe_without_gpu()
        quiet_known_noise()
        kwargs.setdefault("trainer_defaults", {})
        kwargs["trainer_defaults"].setdefault("default_root_dir", "runs")
        # W&B, online with a key and offline without; `--trainer.logger false` turns logging off.
        kwargs["trainer_defaults"].setdefault("logger", {"class_path": "lit_nnopt.app.loggers.AutoWandbLogger"})
        kwargs.setdefault("save_config_kwargs", {"overwrite": True})
        kwargs.setdefault(
            "parser_kwargs",
            {"epilog": _epilog(), "prog": "python -m lit_nnopt", "formatter_class": LineKeepingHelpFormatter},
        )
        # Set after a `fit` that diverged or stayed at chance: the command's exit status says so.
        self.did_not_learn = False
        # The command line, to print the command that resumes an interrupted run.
        self._argv = list(sys.argv[1:]) if args is None else (list(args) if isinstance(args, list) else None)
        super().__init__(MNISTClassifier, MNISTDataModule, args=args, **kwargs)

    @override
    def init_parser(self, **kwargs: Any) -> LightningArgumentParser:
        # LightningCLI's own, with ConciseArgumentParser: its `parser_class` argument is newer than Lightning 2.4.
        kwargs.setdefault("dump_header", [f"lightning.pytorch=={pl.__version__}"])
        parser = ConciseArgumentParser(**kwargs)
        parser.add_argument(
            "-c", "--config", action=ActionConfigFile, help="Path to a configuration file in json or yaml format."
        )
        return parser

    @override
    def add_arguments_to_parser(self, parser: LightningArgumentParser) -> None:
        parser.add_optimizer_args(link_to="model.optimizer")
        parser.add_lr_scheduler_args(link_to="model.lr_scheduler")
        parser.add_lightning_class_args(ModelCheckpoint, "checkpoint")
        # One run folder: the logger's (W&B, TensorBoard, CSV) lands under --trainer.default_root_dir.
        parser.link_arguments("trainer.default_root_dir", "trainer.logger.init_args.save_dir")
        parser.set_defaults(
            {
                "checkpoint.monitor": "val_acc",
                "checkpoint.mode": "max",
                "checkpoint.save_last": True,
                "checkpoint.filename": "best-{epoch:02d}-{val_acc:.4f}",
                "checkpoint.auto_insert_metric_name": False,
            }
        )

    @override
    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(str(subcommand), self.config)
        if subcommand:
            check_output_dirs(config)  # the folders as given, before a run folder is named below them
            place_run(str(subcommand), config, self._dumped)
        # The model is built from the hyperparameters of `--ckpt_path`: a file that is not a
        # checkpoint of this model must be refused before, and clearly.
        ckpt_path = config.get("ckpt_path")
        checkpoint = load_checkpoint_to_check(str(ckpt_path), config.get("weights_only")) if ckpt_path else None
        if checkpoint is not None:
            check_hyperparameters(str(ckpt_path), checkpoint, self.model_class)
            net = config.get("model", {}).get("net")
            note = describe_model_override(checkpoint, net.as_dict() if hasattr(net, "as_dict") else net)
            if note:
                sys.stderr.write(f"lit_nnopt: {note}.\n")
            self._take_model_arguments(parser, checkpoint)

    def _take_model_arguments(self, parser: LightningArgumentParser, checkpoint: dict[str, Any]) -> None:
        """The model's arguments from the checkpoint's hyperparameters, over the config's.

        What LightningCLI does itself from Lightning 2.5 on (again after this, to the same
        result); Lightning 2.4 would build the config's model and fail to load the weights.
        """
        hyperparameters = {k: v for k, v in (checkpoint.get("hyper_parameters") or {}).items() if k != "_instantiator"}
        if not hyperparameters:
            return
        subcommand = self.config.get("subcommand")
        model = {"model": hyperparameters}
        self.config = parser.parse_object({subcommand: model} if subcommand else model, self.config)

    def _dumped(self, config: Any) -> dict[str, Any]:
        """The subcommand's parsed ``config`` as the plain dict a run's ``config.yaml`` holds."""
        return yaml.safe_load(self._parser(str(self.config.get("subcommand"))).dump(config, skip_none=False))

    @override
    def before_instantiate_classes(self) -> None:
        fit_threads_to_free_cpus()
        check_optimizer_settings(self._of_subcommand(self.config))

    def _of_subcommand(self, config: Any) -> Any:
        """The part of ``config`` that belongs to the subcommand run (all of it without subcommands)."""
        return config.get(str(self.subcommand), config)

    @override
    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            raise config_error(error, self._of_subcommand(self.config)) from error

    @override
    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand != "fit":  # an evaluation in a run's folder keeps the config.yaml of its fit
            self.save_config_kwargs = {"config_filename": f"{self.subcommand}_config.yaml", **self.save_config_kwargs}
        trainer_config = {**self._of_subcommand(self.config_init).get("trainer", {}), **kwargs}
        callbacks = default_callbacks(trainer_config)
        for callback in callbacks:
            if isinstance(callback, InterruptCheckpoint) and callback.resume_command is None and self._argv:
                callback.resume_command = resume_command(self._argv, resume_ckpt_path(self._of_subcommand(self.config)))
            if isinstance(callback, RunPictures) and callback.config_name is None and self._argv:
                callback.config_name = " + ".join(Path(path).name for path in config_files(self._argv)) or None
        plugins = _with_atomic_checkpoint_io(trainer_config.get("plugins"))
        return super().instantiate_trainer(**{**kwargs, "callbacks": callbacks, "plugins": plugins})

    def after_fit(self) -> None:
        """Say which checkpoint is best and the command that tests it; or that the run did not learn, and why."""
        if not self.trainer.is_global_zero:
            return
        recorder = next((cb for cb in self.trainer.callbacks if isinstance(cb, RunSummary)), None)
        if recorder is not None and recorder.summary.get("status", OK) != OK:
            self.did_not_learn = True
            lr = init_arg(self._of_subcommand(self.config).get("optimizer"), "lr")
            guarded = _has(self.trainer.callbacks, NaNGuard)
            message = did_not_learn_message(recorder.summary, lr, recorder.num_classes, suggest_nan_guard=not guarded)
            sys.stderr.write(message + "\n")
            return
        checkpoint = self.trainer.checkpoint_callback
        if not isinstance(checkpoint, ModelCheckpoint):
            return
        path = checkpoint.best_model_path or checkpoint.last_model_path
        if not path:
            return
        score = checkpoint.best_model_score if checkpoint.best_model_path else None
        what = f"best checkpoint ({checkpoint.monitor} {float(score):.4f})" if score is not None else "last checkpoint"
        lines = [f"lit_nnopt: {what}: {path}"]
        if self._argv:
            lines.append(f"Test it with: {test_command(self._argv, path)}")
        print("\n".join(lines), flush=True)

    def _check_ckpt_path(self) -> None:
        config = self._of_subcommand(self.config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path:
            check_checkpoint(str(ckpt_path), self.model, self.subcommand == "fit", config.get("weights_only"))

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    given = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    return given if any(isinstance(plugin, CheckpointIO) for plugin in given) else given + [AtomicCheckpointIO()]


def _epilog() -> str:
    lines = ["also:"] + [f"  {name:<10}{text}" for name, text in EXTRA_COMMANDS.items()]
    return "\n".join(lines + ["", "Example: python -m lit_nnopt fit --config configs/adam.yaml"])
