"""The CLI's progress bar: the metrics read only when it redraws, and a bar after a mid-epoch resume."""

from __future__ import annotations

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.callbacks import Callback, RichProgressBar, TQDMProgressBar

from lit_nnopt import MLP, BatchLoader, MNISTClassifier
from lit_nnopt.app import progress
from lit_nnopt.app.progress import CheapRichProgressBar, progress_bar, rich_bar_starts

NEEDS_RICH_BAR = pytest.mark.skipif(
    not rich_bar_starts(), reason="this Lightning cannot start its Rich bar with this rich: the CLI uses tqdm's"
)

BATCHES = 10


def _loader() -> BatchLoader:
    generator = torch.Generator().manual_seed(0)
    images, labels = torch.rand((BATCHES * 8, 1, 28, 28), generator=generator), torch.randint(0, 10, (BATCHES * 8,))
    return BatchLoader(images, labels, 8, shuffle=True, seed=1)


class RecordBar(Callback):
    """After each training batch: the bar's (completed, total) and how often the metrics were read so far."""

    def __init__(self, reads: list[int]) -> None:
        self.reads, self.seen = reads, []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        bar = next(callback for callback in trainer.callbacks if isinstance(callback, CheapRichProgressBar))
        task = bar.progress.tasks[bar.train_progress_bar_id]
        self.seen.append((task.completed, task.total, len(self.reads)))


def _fit(tmp_path, *callbacks, ckpt_path=None, refresh_rate=4) -> None:
    trainer = pl.Trainer(
        accelerator="cpu",
        max_epochs=1,
        logger=False,
        enable_checkpointing=False,
        enable_model_summary=False,
        limit_val_batches=0,
        default_root_dir=tmp_path,
        callbacks=[CheapRichProgressBar(refresh_rate=refresh_rate), *callbacks],
    )
    pl.seed_everything(0, verbose=False)
    trainer.fit(MNISTClassifier(net=MLP([8])), train_dataloaders=_loader(), ckpt_path=ckpt_path)


@pytest.fixture
def reads(monkeypatch: pytest.MonkeyPatch) -> list[int]:
    """Counts the parent's metric reads (each one an `.item()` per metric)."""
    calls: list[int] = []
    read = RichProgressBar.get_metrics

    def counted(self, trainer, pl_module):
        calls.append(trainer.global_step)
        return read(self, trainer, pl_module)

    monkeypatch.setattr(RichProgressBar, "get_metrics", counted)
    return calls


@NEEDS_RICH_BAR
def test_reads_the_metrics_every_refresh_rate_batches_and_at_the_last(tmp_path, reads):
    record = RecordBar(reads)
    _fit(tmp_path, record, refresh_rate=4)
    completed = [done for done, _, _ in record.seen]
    assert completed == list(range(1, BATCHES + 1)) and {total for _, total, _ in record.seen} == {BATCHES}
    # Read after batches 4, 8 and 10 (the last). Lightning 2.6 redraws the metrics after every
    # batch, so the bar also reads them after the first, when nothing is shown yet; Lightning
    # before 2.6 redraws only at its own refresh cadence.
    first = 1 if tuple(int(part) for part in pl.__version__.split(".")[:2]) >= (2, 6) else 0
    assert [count - first for _, _, count in record.seen] == [0, 0, 0, 1, 1, 1, 1, 2, 2, 3]


@NEEDS_RICH_BAR
def test_a_fit_resumed_mid_epoch_has_a_bar_counting_from_the_resume(tmp_path, reads):
    class SaveAtStep3(Callback):
        def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
            if trainer.global_step == 3:
                trainer.save_checkpoint(tmp_path / "step3.ckpt")

    _fit(tmp_path / "whole", SaveAtStep3())
    record = RecordBar(reads)
    _fit(tmp_path / "resumed", record, ckpt_path=str(tmp_path / "step3.ckpt"))
    assert [(done, total) for done, total, _ in record.seen] == [(done, BATCHES) for done in range(4, BATCHES + 1)]


class StrictRichConsole:
    """rich 14.1 and later: clearing a live display when none is shown raises."""

    def __init__(self, **kwargs) -> None:
        pass

    def clear_live(self) -> None:
        raise IndexError("pop from empty list")


class LenientRichConsole(StrictRichConsole):
    """rich before 14.1: clearing a live display when none is shown does nothing."""

    def clear_live(self) -> None:
        pass


@pytest.mark.parametrize(
    "lightning_version, strict_rich, expected",
    [
        ("2.4.0", True, TQDMProgressBar),
        ("2.4.0", False, CheapRichProgressBar),
        ("2.5.6", True, CheapRichProgressBar),
        ("2.6.6", True, CheapRichProgressBar),
    ],
)
def test_the_bar_is_rich_wherever_lightning_can_start_it(monkeypatch, lightning_version, strict_rich, expected):
    monkeypatch.setattr(pl, "__version__", lightning_version)
    monkeypatch.setattr(progress, "Console", StrictRichConsole if strict_rich else LenientRichConsole)
    bar = progress_bar(refresh_rate=7)
    assert type(bar) is expected and bar.refresh_rate == 7
