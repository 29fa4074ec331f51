"""Stop ``fit`` cleanly on SIGTERM or Ctrl-C, save a checkpoint of that moment and say how to resume."""

from __future__ import annotations

import logging
import os
import shlex
import signal
import threading
import time
from pathlib import Path
from types import FrameType
from typing import Any

import lightning.pytorch as pl
from lightning.pytorch.callbacks import ModelCheckpoint
from lightning.pytorch.trainer.states import TrainerFn
from lightning.pytorch.utilities import rank_zero_only
from typing_extensions import override

from lit_nnopt._host import host_classes
from lit_nnopt.callbacks.exact_resume import ExactResume

log = logging.getLogger(__name__)


class InterruptCheckpoint(ExactResume):
    """Stops ``fit`` cleanly on SIGTERM or Ctrl-C, saves a checkpoint and says how to resume.

    Lightning's own SIGTERM handler only raises a flag; the training and validation loops
    check it after each batch and raise ``SIGTERMException`` (a ``SystemExit`` without a
    code, i.e. exit status 0). This callback saves ``<dirpath>/<filename>.ckpt`` at that
    point, logs where it is and the command that resumes from it, and sets the exit status
    to 143 (128 + SIGTERM), so that a scheduler sees the run did not finish.

    Ctrl-C during training is handled the same way (exit status 130): the first one asks the
    loops to stop after the current batch, so the checkpoint holds a state between two steps,
    never one torn in the middle of an optimizer update; a second Ctrl-C stops at once,
    without a checkpoint, as Lightning does by default.

    The checkpoint holds the state at the moment the loop stopped: when fit starts the callback
    moves itself to the front of ``trainer.callbacks``, so it saves before any other callback's
    ``on_exception`` runs (one that restored other weights there would otherwise put them in).

    A signal that arrives during a validation takes effect when the validation ends, for
    Lightning cannot resume a validation midway without losing its metrics (and the
    checkpoint that monitors them). After ``validation_grace`` seconds the run stops midway,
    so that it saves before a scheduler's grace period (often 30 s) runs out.

    It is an :class:`~lit_nnopt.callbacks.ExactResume` too: its checkpoints carry the random
    generators and the epoch's partial metrics, so a run resumed from one ends as if never
    stopped.

    Args:
        dirpath: folder of the checkpoint; defaults to the ModelCheckpoint's folder, else
            ``<log_dir>/checkpoints``.
        filename: its name without ``.ckpt``. ``last`` (the default) replaces the
            ModelCheckpoint's ``last.ckpt``, which is what ``--ckpt_path last`` resumes from.
        catch_ctrl_c: turn the first Ctrl-C during training into a clean stop as above.
        validation_grace: seconds a signal waits for the validation under way to end; 0
            stops after the current validation batch.
        resume_command: the command to print for resuming; ``{ckpt_path}`` in it is replaced
            by the checkpoint's path. Defaults to ``trainer.fit(..., ckpt_path=<path>)``.

    After a stop, ``saved_path`` is the checkpoint's path.

    Raises:
        ValueError: if ``filename`` is empty or holds a path separator, or
            ``validation_grace`` is negative.

    Example::

        >>> import os, signal, tempfile
        >>> import lightning.pytorch as pl
        >>> from lightning.pytorch.demos.boring_classes import BoringModel
        >>> from lit_nnopt.callbacks import InterruptCheckpoint
        >>> class SigtermAtStep3(BoringModel):
        ...     def on_train_batch_end(self, outputs, batch, batch_idx):
        ...         if self.global_step == 3:
        ...             os.kill(os.getpid(), signal.SIGTERM)
        >>> interrupt = InterruptCheckpoint()
        >>> trainer = pl.Trainer(max_steps=10, callbacks=[interrupt], default_root_dir=tempfile.mkdtemp(),
        ...     logger=False, enable_checkpointing=False, enable_progress_bar=False, enable_model_summary=False)
        >>> try:
        ...     trainer.fit(SigtermAtStep3())
        ... except SystemExit as stop:
        ...     print("exit status", stop.code)
        exit status 143
        >>> os.path.basename(interrupt.saved_path), trainer.global_step
        ('last.ckpt', 3)
    """

    def __init__(
        self,
        dirpath: str | None = None,
        filename: str = ModelCheckpoint.CHECKPOINT_NAME_LAST,
        catch_ctrl_c: bool = True,
        validation_grace: float = 10.0,
        resume_command: str | None = None,
    ) -> None:
        if not filename or os.sep in filename or "/" in filename:
            raise ValueError(f"`filename` must be a file name without folder or extension, got {filename!r}.")
        if not validation_grace >= 0:
            raise ValueError(f"`validation_grace` must be a number of seconds >= 0, got {validation_grace}.")
        super().__init__()
        self.dirpath = dirpath
        self.filename = filename
        self.catch_ctrl_c = catch_ctrl_c
        self.validation_grace = validation_grace
        self.resume_command = resume_command
        self.saved_path: str | None = None
        self._signal: int | None = None
        self._deferred_since: float | None = None
        self._lightning_sigterm: Any = None

    @override
    def setup(self, trainer: pl.Trainer, pl_module: pl.LightningModule, stage: str) -> None:
        super().setup(trainer, pl_module, stage)
        trainer.callbacks.remove(self)
        trainer.callbacks.insert(0, self)

    # The handlers are installed once training starts, after Lightning's signal connector took
    # note of the previous ones: Lightning puts those back when fit ends, however it ends.
    @override
    def on_train_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        super().on_train_start(trainer, pl_module)
        self._signal, self._deferred_since = None, None
        if threading.current_thread() is not threading.main_thread():
            return
        self._lightning_sigterm = signal.getsignal(signal.SIGTERM)
        signal.signal(signal.SIGTERM, self._on_sigterm)
        if self.catch_ctrl_c:
            signal.signal(signal.SIGINT, self._on_sigint)

    def _on_sigterm(self, signum: int, frame: FrameType | None) -> None:
        self._signal = self._signal or signum
        trainer = self._trainer
        if trainer is not None and trainer.validating and self.validation_grace > 0:
            if self._deferred_since is None:
                self._deferred_since = time.monotonic()
                grace = f"{self.validation_grace:g}"
                _rank_zero_warning(f"lit_nnopt: stopping when this validation ends (in {grace} s at most).")
            return
        self._raise_flag(frame)

    def _raise_flag(self, frame: FrameType | None) -> None:
        # Lightning's handler only sets the flag that its loops check after each batch.
        if callable(self._lightning_sigterm):
            self._lightning_sigterm(signal.SIGTERM, frame)

    def _on_sigint(self, signum: int, frame: FrameType | None) -> None:
        if self._signal is not None:
            signal.signal(signal.SIGINT, signal.default_int_handler)
            raise KeyboardInterrupt
        _rank_zero_warning("lit_nnopt: stopping after this batch to save a checkpoint; Ctrl-C again stops at once.")
        self._on_sigterm(signum, frame)

    @override
    def on_validation_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        if self._deferred_since is not None and time.monotonic() - self._deferred_since >= self.validation_grace:
            self._deferred_since = None
            self._raise_flag(None)

    @override
    def on_validation_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if self._deferred_since is not None:
            self._deferred_since = None
            self._raise_flag(None)

    @override
    def on_exception(self, trainer: pl.Trainer, pl_module: pl.LightningModule, exception: BaseException) -> None:
        if isinstance(exception, host_classes("utilities.exceptions", "SIGTERMException")):
            signum = self._signal or signal.SIGTERM
            exception.code = 128 + signum
            self._save_and_explain(trainer, signal.Signals(signum).name)
        elif isinstance(exception, KeyboardInterrupt):
            # It may have landed inside an optimizer step: that state is not worth saving.
            last = getattr(trainer.checkpoint_callback, "last_model_path", "")
            saved = f"; the last one saved is {last}." if last else "."
            _rank_zero_warning(f"lit_nnopt: stopped at once, without a checkpoint{saved}")

    def _save_and_explain(self, trainer: pl.Trainer, signal_name: str) -> None:
        if trainer.state.fn != TrainerFn.FITTING or trainer.sanity_checking:
            _rank_zero_warning(f"lit_nnopt: {signal_name} received: stopped; outside training, nothing to save.")
            return
        path = self._checkpoint_path(trainer)
        checkpoint = trainer.checkpoint_callback
        if checkpoint is not None and path.stem == checkpoint.CHECKPOINT_NAME_LAST:
            # Stored in the checkpoint, so that after a resume ModelCheckpoint overwrites this
            # file with its next `last.ckpt` instead of writing `last-v1.ckpt` beside it.
            checkpoint.last_model_path = str(path)
        trainer.save_checkpoint(path, weights_only=False)
        self.saved_path = str(path)
        if self.resume_command:
            command = self.resume_command.replace("{ckpt_path}", shlex.quote(str(path)))
        else:
            command = f"trainer.fit(model, datamodule, ckpt_path={str(path)!r})"
        where = f"epoch {trainer.current_epoch}, step {trainer.global_step}"
        _rank_zero_warning(
            f"lit_nnopt: {signal_name} received: stopped at {where} and saved {path}\nResume with: {command}"
        )

    def _checkpoint_path(self, trainer: pl.Trainer) -> Path:
        checkpoint = trainer.checkpoint_callback
        if self.dirpath:
            folder = Path(self.dirpath)
        elif checkpoint is not None and checkpoint.dirpath:
            folder = Path(checkpoint.dirpath)
        else:
            folder = Path(trainer.log_dir or trainer.default_root_dir) / "checkpoints"
        return folder / f"{self.filename}{ModelCheckpoint.FILE_EXTENSION}"


def _rank_zero_warning(message: str) -> None:
    if rank_zero_only.rank == 0:
        log.warning(message)
