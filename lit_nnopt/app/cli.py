"""LitNNOptCLI: LightningCLI for MNISTClassifier and MNISTDataModule with lit_nnopt's defaults.

``python -m lit_nnopt fit --config configs/adam.yaml`` goes YAML -> LightningCLI ->
MNISTDataModule / MNISTClassifier / callbacks -> Trainer. Everything a config can set is
listed by ``python -m lit_nnopt fit --help``.
"""

from __future__ import annotations

import importlib
import os
import re
import shlex
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
    RichModelSummary,
)
from lightning.pytorch.cli import LightningArgumentParser, LightningCLI
from lightning.pytorch.plugins import CheckpointIO
from typing_extensions import override

from lit_nnopt.app.checks import (
    CheckpointError,
    check_checkpoint,
    check_hyperparameters,
    check_writable,
    describe_model_override,
    load_checkpoint_to_check,
)
from lit_nnopt.app.commands import EXTRA_COMMANDS
from lit_nnopt.app.config_files import config_files
from lit_nnopt.app.console import ConciseArgumentParser, LineKeepingHelpFormatter, quiet_known_noise
from lit_nnopt.app.environment import fit_threads_to_free_cpus, skip_nvml_probe_without_gpu
from lit_nnopt.app.predictions import PredictionWriter
from lit_nnopt.app.progress import progress_bar
from lit_nnopt.app.reports import OK, RunSummary, did_not_learn_message
from lit_nnopt.app.run_pictures import RunPictures
from lit_nnopt.app.runs import (
    BestRun,
    best_run_checkpoint,
    find_resumable_checkpoint,
    new_run_name,
    resume_command,
    run_folder_of,
)
from lit_nnopt.app.schedule_length import ScheduleLength
from lit_nnopt.callbacks import InterruptCheckpoint, NaNGuard
from lit_nnopt.checkpoint_io import AtomicCheckpointIO
from lit_nnopt.data import MNISTDataModule
from lit_nnopt.model import MNISTClassifier


def default_callbacks(trainer_config: dict[str, Any]) -> list[Callback]:
    """The callbacks of every CLI run, each unless ``trainer_config`` gives one of its kind.

    A progress bar, a model summary, an LR monitor, the run summary, the pictures, the interrupt
    checkpoint, the prediction CSV and the check of a fixed-length schedule against the run.
    """
    given = list(trainer_config.get("callbacks") or [])
    defaults: list[Callback] = []
    if trainer_config.get("enable_progress_bar", True) is not False and not _has(given, ProgressBar):
        defaults.append(progress_bar(refresh_rate=_progress_refresh_rate()))
    if trainer_config.get("enable_model_summary", True) is not False and not _has(given, ModelSummary):
        defaults.append(RichModelSummary(max_depth=2))
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

    def parse_arguments(self, parser: LightningArgumentParser, args: Any) -> None:
        super().parse_arguments(parser, args)
        subcommand = self.config.get("subcommand")
        config = self.config.get(str(subcommand), self.config)
        if subcommand:
            _check_output_dirs(config)  # the folders as given, before a run folder is named below them
            self._place_run(str(subcommand), config)
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

    def _place_run(self, subcommand: str, config: Any) -> None:
        """Which checkpoint the run uses and which folder it writes to.

        ``--ckpt_path last`` names the newest ``last.ckpt`` of a run of this config, ``best`` the
        best checkpoint by the monitored metric among this config's runs that learnt;
        ``validate``, ``test`` and ``predict`` refuse to run without a checkpoint. An evaluation
        of a run's checkpoint writes into that run's folder, wherever it lies (a run that
        ``compare`` trained, say), a ``fit`` resumed with ``last`` goes on in its run's folder,
        and any other run without a logger gets a new ``<subcommand>-<date>-<time>`` folder. All
        this is left to Lightning where the user fixed the folder (an explicit logger ``id``,
        ``checkpoint.dirpath``, or another logger).
        """
        root = _runs_root(config)
        ckpt_path = config.get("ckpt_path")
        named = ckpt_path in ("last", "best")
        if root is not None and named:
            ckpt_path = config.ckpt_path = self._find_checkpoint(subcommand, config, root, ckpt_path)
        if subcommand != "fit" and not ckpt_path:
            raise CheckpointError(self._no_checkpoint_message(subcommand, config, root))
        if root is None:
            return
        run = run_folder_of(ckpt_path) if ckpt_path else None
        continues_run = run is not None and (subcommand != "fit" or named)
        logger = config.get("trainer", {}).get("logger")
        if continues_run and run.parent.absolute() != root.absolute():
            sys.stderr.write(f"lit_nnopt: {subcommand}: writing into the checkpoint's run folder {run}\n")
        if _is_auto_wandb(logger):
            if continues_run:  # the logger's run folder is <save_dir>/<project>/<id>: the checkpoint's run
                logger.init_args.id = run.name
                logger.init_args.project = run.parent.name
                logger.init_args.save_dir = config.trainer.default_root_dir = str(run.parent.parent)
        elif continues_run:
            config.trainer.default_root_dir = str(run)
        else:
            config.trainer.default_root_dir = str(root / new_run_name(root, subcommand))

    def _find_checkpoint(self, subcommand: str, config: Any, root: Path, which: str) -> str | None:
        if which == "last":
            found = find_resumable_checkpoint(root, self._dumped(config))
            what = "has a last.ckpt"
        else:
            best = self._best_run(config, root)
            found = best.checkpoint if best else None
            what = "that learnt has a best checkpoint"
        if found is None and (subcommand != "fit" or which == "best"):
            raise CheckpointError(
                f"--ckpt_path {which}: no run of this config under {root} {what}. Give the checkpoint's path "
                "instead, or train one with `python -m lit_nnopt fit` and this config."
            )
        if found is None:
            sys.stderr.write(
                f"lit_nnopt: --ckpt_path last: no run of this config under {root} to resume; starting a new run.\n"
            )
            return None
        if which == "best":
            sys.stderr.write(f"lit_nnopt: {subcommand}: using {found}, {_describe_best(best)}.\n")
        elif subcommand == "fit":
            sys.stderr.write(f"lit_nnopt: resuming from {found}\n")
        else:
            sys.stderr.write(f"lit_nnopt: {subcommand}: using {found}, the last checkpoint of the latest run.\n")
        return str(found)

    def _best_run(self, config: Any, root: Path) -> BestRun | None:
        checkpoint = config.get("checkpoint", {})
        monitor, mode = checkpoint.get("monitor") or "val_acc", checkpoint.get("mode") or "max"
        return best_run_checkpoint(root, self._dumped(config), monitor, mode)

    def _no_checkpoint_message(self, subcommand: str, config: Any, root: Path | None) -> str:
        best = self._best_run(config, root) if root is not None else None
        if best is not None:
            hint = (
                f"The best run of this config by {best.monitor} ({best.run.name}, {best.score:.4f}) has its best "
                f"checkpoint at {best.checkpoint}: add `--ckpt_path best` to use it, or `--ckpt_path <file>` for "
                "another."
            )
        else:
            where = f" under {root}" if root is not None else ""
            hint = (
                f"No run of this config{where} that learnt has a checkpoint: train one with `python -m lit_nnopt "
                "fit` and this config, or give `--ckpt_path <file>` (a run's checkpoints/best-*.ckpt)."
            )
        problem = f"`{subcommand}` needs trained weights and no --ckpt_path was given"
        return f"{problem}: it would score an untrained model. {hint}"

    def _dumped(self, config: Any) -> dict[str, Any]:
        return yaml.safe_load(self._parser(str(self.config.get("subcommand"))).dump(config, skip_none=False))

    def before_instantiate_classes(self) -> None:
        fit_threads_to_free_cpus()
        config = self._of_subcommand(self.config)
        optimizer = config.get("optimizer")
        lr = _init_arg(optimizer, "lr")
        if lr is not None and not (isinstance(lr, (int, float)) and lr > 0):
            raise ConfigError(
                f"`optimizer.init_args.lr` must be a positive number, got {lr!r}. Set e.g. `--optimizer.lr 0.001`."
            )
        _check_scheduler_patience(config)

    def _of_subcommand(self, config: Any) -> Any:
        """The part of ``config`` that belongs to the subcommand run (all of it without subcommands)."""
        return config.get(str(self.subcommand), config)

    def instantiate_classes(self) -> None:
        try:
            super().instantiate_classes()
        except ValueError as error:
            raise config_error(error, self._of_subcommand(self.config)) from error

    def instantiate_trainer(self, **kwargs: Any) -> Trainer:
        if self.subcommand != "fit":  # an evaluation in a run's folder keeps the config.yaml of its fit
            self.save_config_kwargs = {"config_filename": f"{self.subcommand}_config.yaml", **self.save_config_kwargs}
        trainer_config = {**self._of_subcommand(self.config_init).get("trainer", {}), **kwargs}
        callbacks = default_callbacks(trainer_config)
        for callback in callbacks:
            if isinstance(callback, InterruptCheckpoint) and callback.resume_command is None and self._argv:
                callback.resume_command = resume_command(self._argv, self._resume_ckpt_path())
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
            lr = _init_arg(self._of_subcommand(self.config).get("optimizer"), "lr")
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

    def _resume_ckpt_path(self) -> str:
        """``last`` where ``--ckpt_path last`` finds this run's checkpoint again, else its path."""
        config = self._of_subcommand(self.config)
        logger = config.get("trainer", {}).get("logger")
        fixed_folder = config.get("checkpoint", {}).get("dirpath") or logger in (None, False)
        return "last" if fixed_folder or _is_auto_wandb(logger) else "{ckpt_path}"

    def _check_ckpt_path(self) -> None:
        config = self._of_subcommand(self.config)
        ckpt_path = config.get("ckpt_path")
        if ckpt_path:
            check_checkpoint(str(ckpt_path), self.model, self.subcommand == "fit", config.get("weights_only"))

    before_fit = before_validate = before_test = before_predict = _check_ckpt_path


def test_command(argv: list[str], ckpt_path: str) -> str:
    """The ``fit`` command line ``argv`` turned into the ``test`` of ``ckpt_path``."""
    subcommand = next((i for i, arg in enumerate(argv) if arg == "fit"), None)
    as_test = [*argv[:subcommand], "test", *argv[subcommand + 1 :]] if subcommand is not None else argv
    return resume_command(as_test, shlex.quote(ckpt_path))


def _describe_best(best: BestRun) -> str:
    among = "the only run" if best.runs_compared == 1 else f"the best of {best.runs_compared} runs"
    return f"the best checkpoint by {best.monitor} ({best.score:.4f}) of run {best.run.name}, {among} of this config"


def _runs_root(config: Any) -> Path | None:
    """The folder holding the run folders lit_nnopt names; None where the user fixed the run's folder."""
    if config.get("checkpoint", {}).get("dirpath"):
        return None
    trainer = config.get("trainer", {})
    logger = trainer.get("logger")
    if logger in (None, False):
        return Path(trainer.get("default_root_dir") or "runs")
    if not _is_auto_wandb(logger):
        return None
    init_args = logger.get("init_args") or {}
    if init_args.get("id") or os.environ.get("WANDB_RUN_ID"):
        return None
    return Path(init_args.get("save_dir") or "runs") / (init_args.get("project") or "lit_nnopt")


def _init_arg(namespace: Any, key: str) -> Any:
    if not namespace:
        return None
    init_args = namespace.get("init_args") if hasattr(namespace, "get") else None
    return init_args.get(key) if init_args is not None and hasattr(init_args, "get") else None


def _check_scheduler_patience(config: Any) -> None:
    # torch's ReduceLROnPlateau takes any patience, and is built only when training starts.
    scheduler = config.get("lr_scheduler")
    patience = _init_arg(scheduler, "patience")
    if isinstance(patience, (int, float)) and patience < 0:
        raise ConfigError(
            f"`lr_scheduler.init_args.patience` of {scheduler.get('class_path')} must be >= 0, got {patience!r}: "
            "it counts the checks without improvement to wait for."
        )


def config_error(error: ValueError, config: Any) -> ConfigError:
    """A constructor's "`name` must ..." error, with ``name`` replaced by its key in ``config``.

    The library's classes check their own arguments; the CLI only says where in the config the
    value came from, so that each rule has one home. jsonargparse reports a constructor's error
    inside its own (one line per type it tried); the constructor's line says what is wrong.
    """
    match = re.search(r"`(\w+)` ((?:must|can|needs) [^\n]*)", str(error))
    plain = config.as_dict() if hasattr(config, "as_dict") else config
    paths = list(_keys_named(match.group(1), plain)) if match else []
    if not paths:
        return ConfigError(str(error))
    path, class_path, value = next(
        ((p, c, v) for p, c, v in paths if repr(v) in str(error) or str(v) in str(error)), paths[0]
    )
    if "[" in path:  # an entry of a list, which the command line cannot address by index
        return ConfigError(f"`{path}` of {class_path} {match.group(2).rstrip('.')}. Change it in the config file.")
    return ConfigError(f"`{path}` {match.group(2).rstrip('.')}. Set e.g. `--{path} <value>`.")


def _keys_named(name: str, node: Any, path: str = "", class_path: str | None = None) -> Any:
    """``(path, class_path, value)`` of every ``init_args`` entry called ``name`` in a parsed config."""
    if hasattr(node, "items"):
        items = list(node.items())
        if path.endswith("init_args") and name in dict(items):
            yield f"{path}.{name}", class_path, dict(items)[name]
        owner = node.get("class_path") if hasattr(node, "get") else None
        for key, value in items:
            yield from _keys_named(name, value, f"{path}.{key}" if path else str(key), owner or class_path)
    elif isinstance(node, list):
        for index, value in enumerate(node):
            yield from _keys_named(name, value, f"{path}[{index}]", class_path)


def _check_output_dirs(config: Any) -> None:
    trainer = config.get("trainer", {})
    folders = [(trainer.get("default_root_dir"), "--trainer.default_root_dir")]
    loggers = trainer.get("logger")
    for logger in loggers if isinstance(loggers, list) else [loggers]:
        folders.append((_init_arg(logger, "save_dir"), "--trainer.logger.save_dir"))
    folders.append((config.get("checkpoint", {}).get("dirpath"), "--checkpoint.dirpath"))
    for folder, option in folders:
        if folder:
            check_writable(folder, option)


def _is_auto_wandb(logger: Any) -> bool:
    from lit_nnopt.app.loggers import AutoWandbLogger

    class_path = logger.get("class_path") if hasattr(logger, "get") else None
    if not isinstance(class_path, str) or "." not in class_path:
        return False
    module, name = class_path.rsplit(".", 1)
    try:
        cls = getattr(importlib.import_module(module), name)
    except (ImportError, AttributeError):
        return False
    return isinstance(cls, type) and issubclass(cls, AutoWandbLogger)


def _with_atomic_checkpoint_io(plugins: Any) -> list[Any]:
    given = list(plugins) if isinstance(plugins, (list, tuple)) else [] if plugins is None else [plugins]
    return given if any(isinstance(plugin, CheckpointIO) for plugin in given) else given + [AtomicCheckpointIO()]


def _epilog() -> str:
    lines = ["also:"] + [f"  {name:<10}{text}" for name, text in EXTRA_COMMANDS.items()]
    return "\n".join(lines + ["", "Example: python -m lit_nnopt fit --config configs/adam.yaml"])


class ConfigError(ValueError):
    """A configuration value is out of range; raised before anything is trained or written."""
