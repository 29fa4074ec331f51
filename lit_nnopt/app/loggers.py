"""Weights & Biases logging that works without an account or a network.

``AutoWandbLogger`` is the default logger of ``python -m lit_nnopt``. Its ``mode="auto"``
logs online when the user has an API key (``WANDB_API_KEY``, or a ``wandb login`` that left
an entry in ``~/.netrc``) and offline otherwise, into the run folder, with one line saying
how to ``wandb sync`` it later. ``WANDB_MODE`` in the environment always wins. An online
start that cannot reach the server within ``init_timeout`` falls back to offline.
"""

from __future__ import annotations

import configparser
import netrc
import os
import secrets
import shutil
import string
from pathlib import Path
from typing import Any, Literal
from urllib.parse import urlsplit

from lightning.pytorch.loggers import WandbLogger
from lightning.pytorch.loggers.logger import rank_zero_experiment
from lightning.pytorch.utilities import rank_zero_only
from torch import nn
from typing_extensions import override

from lit_nnopt._lightning_internals import drop_wandb_anonymous_setting, forget_wandb_run

MODES = ("auto", "online", "offline", "disabled")
WATCH_CHOICES = ("gradients", "parameters", "all")
# What WANDB_MODE may say, and what it means here ("dryrun" and "run" are wandb's old names).
_ENV_MODES = {"online": "online", "run": "online", "offline": "offline", "dryrun": "offline", "disabled": "disabled"}
# `wandb login` writes its key under the API host: api.wandb.ai before wandb 0.2x, the
# CoreWeave Forge host in wandb 0.31 (which still reads api.wandb.ai entries).
_DEFAULT_API_HOSTS = ("api.wandb.ai", "api.forge.coreweave.com")
_ID_CHARS = string.ascii_lowercase + string.digits
CONFIG_COPY = "lightning_config.yaml"


def has_api_key() -> bool:
    """Whether W&B credentials exist on this machine: environment, ``.netrc`` or wandb's settings file."""
    if os.environ.get("WANDB_API_KEY") or os.environ.get("WANDB_IDENTITY_TOKEN_FILE"):
        return True
    settings = _global_settings()
    if settings.get("api_key"):
        return True
    base_url = os.environ.get("WANDB_BASE_URL") or settings.get("base_url")
    hosts = (urlsplit(base_url).netloc,) if base_url else _DEFAULT_API_HOSTS
    return any(_netrc_has(host) for host in hosts)


def _global_settings() -> dict[str, str]:
    config_dir = Path(os.environ.get("WANDB_CONFIG_DIR") or Path.home() / ".config" / "wandb")
    parser = configparser.ConfigParser()
    try:
        parser.read(config_dir / "settings")
    except configparser.Error:  # wandb itself ignores an unreadable settings file
        return {}
    return dict(parser["default"]) if parser.has_section("default") else {}


def _netrc_has(host: str) -> bool:
    path = Path(os.environ.get("NETRC") or Path.home() / ".netrc").expanduser()
    try:
        entry = netrc.netrc(path).authenticators(host)
    except (OSError, netrc.NetrcParseError):
        return False
    return bool(entry and entry[2])


def resolve_mode(mode: str, key_available: bool) -> tuple[str, str]:
    """The W&B mode a run uses, and why, from ``WANDB_MODE``, the ``mode`` argument and the key.

    Raises:
        ValueError: if ``WANDB_MODE`` holds something wandb does not know.
    """
    env_mode = os.environ.get("WANDB_MODE", "").strip().lower()
    if env_mode:
        if env_mode not in _ENV_MODES:
            raise ValueError(
                f"WANDB_MODE={env_mode!r} is not a W&B mode. Set it to online, offline or disabled, or unset it "
                "to let lit_nnopt log online when you are logged in and offline otherwise."
            )
        mode, source = _ENV_MODES[env_mode], "WANDB_MODE"
    else:
        source = "mode"
    if mode == "auto":
        return ("online", "an API key was found") if key_available else ("offline", "no API key was found")
    if mode == "online" and not key_available:
        # wandb would prompt for a key (a hang without a terminal user) or fail: log offline instead.
        return "offline", f"{source} asks for online but no API key was found"
    return mode, f"{source} is {mode}"


def _new_run_id() -> str:
    return "".join(secrets.choice(_ID_CHARS) for _ in range(8))


class AutoWandbLogger(WandbLogger):
    """``WandbLogger`` that picks online or offline by itself and keeps a run in one folder.

    A run's folder is ``<save_dir>/<project>/<run id>``; it holds the W&B files
    (``wandb/``), the checkpoints (``checkpoints/``), the CLI's ``config.yaml`` and the run
    summary and pictures, because it is what ``trainer.log_dir`` returns. So that Lightning
    puts checkpoints there too, ``name`` and ``version`` are empty (Lightning's convention
    for "no subfolder"); the W&B project and run id are ``project`` and ``run_id``.

    Besides what ``WandbLogger`` logs (hyperparameters, metrics, system metrics), it logs
    the LightningCLI config saved in the run folder as the W&B config key ``cli`` and
    uploads it as ``lightning_config.yaml``, so a run can be repeated from its W&B page.

    Args:
        mode: ``auto`` logs online when an API key is found and offline otherwise;
            ``online``, ``offline`` or ``disabled`` force one. ``WANDB_MODE`` in the
            environment overrides this. Online without a key logs offline.
        project: W&B project; also the folder below ``save_dir``.
        save_dir: root of the run folders.
        name: display name of the run (W&B picks one if None).
        id: run id; reuse one to resume that run and its folder. Defaults to the id a
            ``wandb agent`` hands out (``WANDB_RUN_ID``), else a new one.
        entity: W&B user or team (your default entity if None).
        group: W&B group, e.g. to gather the runs of one comparison.
        tags: W&B tags.
        notes: a longer description of the run.
        log_model: upload checkpoints as W&B artifacts when online: ``True`` the best and
            last ones after training, ``"all"`` each one as it is saved.
        checkpoint_name: name of the model artifact (``model-<run id>`` if None).
        prefix: put before every metric name.
        watch: ``wandb.watch`` the model, logging ``gradients``, ``parameters`` or ``all``
            as histograms; None to not watch.
        watch_log_freq: log those histograms every this many training steps.
        init_timeout: seconds to wait for the W&B server before logging offline instead.
        config_file: the LightningCLI config file in the run folder to log; None to skip.

    Raises:
        ValueError: if ``mode``, ``watch``, ``watch_log_freq`` or ``init_timeout`` is out of range.

    Example::

        python -m lit_nnopt fit --config configs/adam.yaml --trainer.logger.mode offline
    """

    def __init__(
        self,
        mode: Literal["auto", "online", "offline", "disabled"] = "auto",
        project: str = "lit_nnopt",
        save_dir: str = "runs",
        name: str | None = None,
        id: str | None = None,
        entity: str | None = None,
        group: str | None = None,
        tags: list[str] | None = None,
        notes: str | None = None,
        log_model: Literal["all"] | bool = False,
        checkpoint_name: str | None = None,
        prefix: str = "",
        watch: Literal["gradients", "parameters", "all"] | None = None,
        watch_log_freq: int = 100,
        init_timeout: float = 30.0,
        config_file: str | None = "config.yaml",
    ) -> None:
        if mode not in MODES:
            raise ValueError(f"`mode` can be {', '.join(MODES)}, got {mode!r}.")
        if watch is not None and watch not in WATCH_CHOICES:
            raise ValueError(f"`watch` can be {', '.join(WATCH_CHOICES)} or None, got {watch!r}.")
        if watch_log_freq < 1:
            raise ValueError(f"`watch_log_freq` must be a number of steps >= 1, got {watch_log_freq}.")
        if not init_timeout > 0:
            raise ValueError(f"`init_timeout` must be a positive number of seconds, got {init_timeout}.")
        self.mode, self.mode_reason = resolve_mode(mode, has_api_key())
        self.run_id = id or os.environ.get("WANDB_RUN_ID") or _new_run_id()
        self.run_dir = Path(save_dir) / project / self.run_id
        self.project = project
        self.init_timeout = init_timeout
        self.watch_log = watch
        self.watch_log_freq = watch_log_freq
        self.config_file = config_file
        self._watched = False
        self._made_run_dir = False
        self._logged_anything = False
        self._started = False
        # wandb.init's settings, ours to change before a second start (offline after a failed online one).
        # Offline, wandb's seven lines of banner and farewell say what `finalize` says in one. Online,
        # quiet keeps the run's address and saves a failed start ten seconds of farewell.
        self._run_settings = {
            "mode": self.mode,
            "init_timeout": init_timeout,
            "quiet": True,
            "silent": self.mode == "offline",
        }
        extra = {"entity": entity, "group": group, "tags": tags, "notes": notes}
        super().__init__(
            name=name,
            save_dir=str(self.run_dir),
            id=self.run_id,
            project=project,
            log_model=log_model,
            checkpoint_name=checkpoint_name,
            prefix=prefix,
            settings=self._run_settings,
            **{key: value for key, value in extra.items() if value is not None},
        )

    @property
    @override
    def name(self) -> str:
        """Empty: the run folder is ``save_dir`` itself, with no project subfolder below it."""
        return ""

    @property
    @override
    def version(self) -> str:
        """Empty: the run folder is ``save_dir`` itself, with no version subfolder below it."""
        return ""

    @property
    @override
    @rank_zero_experiment
    def experiment(self) -> Any:
        if not self._started:
            self._start()
        return WandbLogger.experiment.fget(self)

    def _start(self) -> None:
        import wandb

        drop_wandb_anonymous_setting(self)
        # wandb looks for the git commit from its folder, before it creates that folder.
        self._made_run_dir = not self.run_dir.exists()
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            WandbLogger.experiment.fget(self)
        except Exception as error:  # CommError, AuthenticationError, UsageError...: all mean "cannot log online"
            if self.mode != "online":
                raise
            self._fall_back_to_offline(wandb, error)
            WandbLogger.experiment.fget(self)
        self._started = True

    def _fall_back_to_offline(self, wandb: Any, error: Exception) -> None:
        reason = str(error).strip().splitlines()[0] if str(error).strip() else type(error).__name__
        self.mode, self.mode_reason = "offline", f"could not start online ({reason})"
        self._run_settings.update(mode="offline", silent=True)
        # The failed start still holds the run id in wandb's service and left a half-made run folder.
        wandb.teardown()
        for stale in (self.run_dir / "wandb").glob(f"run-*-{self.run_id}"):
            shutil.rmtree(stale, ignore_errors=True)

    @override
    @rank_zero_only
    def log_metrics(self, metrics: dict[str, Any], step: int | None = None) -> None:
        super().log_metrics(metrics, step)
        self._logged_anything = True

    @override
    @rank_zero_only
    def finalize(self, status: str) -> None:
        if status != "success" and not self._logged_anything and self._started:
            self._discard_empty_run()
            return
        super().finalize(status)
        if self.mode == "offline" and self._started:
            _say_offline(self._sync_target(), self.mode_reason)

    def _discard_empty_run(self) -> None:
        """Remove what a run that failed before logging anything (a data error, say) left behind.

        Such a run holds nothing worth syncing: its folder goes, or where it continued a run
        folder that existed before (a ``test`` of a trained run), only its own W&B files.
        """
        experiment, self._started = self.experiment, False
        forget_wandb_run(self)
        run_files = Path(experiment.dir).parent if self.mode != "disabled" else None
        experiment.finish(exit_code=1)
        if self._made_run_dir:
            shutil.rmtree(self.run_dir, ignore_errors=True)
        elif run_files is not None and run_files.parent == self.run_dir / "wandb":
            shutil.rmtree(run_files, ignore_errors=True)

    def _sync_target(self) -> str:
        # A resumed run (same id: fit, then test) has one offline folder per process; sync them all.
        pattern = f"offline-run-*-{self.run_id}"
        found = list((self.run_dir / "wandb").glob(pattern))
        return str(found[0] if len(found) == 1 else self.run_dir / "wandb" / pattern)

    @override
    def after_save_checkpoint(self, checkpoint_callback: Any) -> None:
        if self.mode == "online":  # an offline run would copy every checkpoint into wandb's staging area
            super().after_save_checkpoint(checkpoint_callback)

    @override
    @rank_zero_only
    def log_hyperparams(self, params: Any) -> None:
        super().log_hyperparams(params)
        self._log_cli_config()

    def _log_cli_config(self) -> None:
        if not self.config_file or self.mode == "disabled":
            return
        path = self.run_dir / self.config_file
        if not path.is_file():
            return
        import yaml

        config = yaml.safe_load(path.read_text()) or {}
        self.experiment.config.update({"cli": config}, allow_val_change=True)
        # wandb uploads everything in run.dir; "config.yaml" there is wandb's own file.
        shutil.copyfile(path, Path(self.experiment.dir) / CONFIG_COPY)

    @override
    @rank_zero_only
    def log_graph(self, model: nn.Module, input_array: Any = None) -> None:
        if self.watch_log and not self._watched and self.mode != "disabled":
            self.watch(model, log=self.watch_log, log_freq=self.watch_log_freq, log_graph=False)
            self._watched = True


def _say_offline(sync_target: str, reason: str) -> None:
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True).print(
        f"[bold]W&B[/bold]: {escape(reason)}, so this run was logged offline; "
        f"upload it with [bold]wandb sync {escape(sync_target)}[/bold]",
        soft_wrap=True,
        highlight=False,
    )
