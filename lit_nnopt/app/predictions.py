"""``predict`` writes its predictions where a user finds them: ``predictions.csv`` in the run folder."""

from __future__ import annotations

import csv
from pathlib import Path
from typing import Any

import lightning.pytorch as pl
import torch
from lightning.pytorch.utilities import rank_zero_only
from torch.nn import functional as F
from typing_extensions import override

from lit_nnopt.data import class_names_of

PREDICTIONS_FILE = "predictions.csv"


class PredictionWriter(pl.Callback):
    """Writes one CSV row per predicted sample: ``index,prediction,class_name,probability``.

    ``index`` is the sample's position in the prediction data (the test split of
    ``MNISTDataModule``), ``prediction`` the predicted class, ``class_name`` its name
    (the digit for MNIST, e.g. ``Sneaker`` for Fashion-MNIST), and ``probability`` the softmax
    probability the model gave it. The file goes into ``trainer.log_dir`` (the run folder);
    under DDP each rank writes its share to ``predictions.rank<N>.csv``.

    The module's ``predict_step`` returns the classes only, so the probabilities come from a
    second forward pass of each batch, which for MNIST's models costs milliseconds.

    Args:
        filename: the CSV file's name in the run folder.

    Raises:
        ValueError: if ``filename`` is empty or holds a folder.

    Example::

        python -m lit_nnopt predict --config configs/adam.yaml --ckpt_path best
    """

    def __init__(self, filename: str = PREDICTIONS_FILE) -> None:
        if not filename or Path(filename).name != filename:
            raise ValueError(f"`filename` must be a file name without a folder, got {filename!r}.")
        self.filename = filename
        self.path: Path | None = None
        self._rows: list[torch.Tensor] = []

    @override
    def on_predict_start(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        self._rows = []

    @override
    def on_predict_batch_end(
        self,
        trainer: pl.Trainer,
        pl_module: pl.LightningModule,
        outputs: Any,
        batch: Any,
        batch_idx: int,
        dataloader_idx: int = 0,
    ) -> None:
        images = batch[0] if isinstance(batch, (list, tuple)) else batch
        probabilities = F.softmax(pl_module(images).float(), dim=1)
        predictions = outputs if isinstance(outputs, torch.Tensor) else probabilities.argmax(dim=1)
        chosen = probabilities.gather(1, predictions.long().reshape(-1, 1)).squeeze(1)
        self._rows.append(torch.stack([predictions.double(), chosen.double()], dim=1).cpu())

    @override
    def on_predict_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        log_dir = Path(trainer.log_dir or trainer.default_root_dir)  # a broadcast under DDP: every rank asks
        name = self.filename
        if trainer.world_size > 1:
            stem, dot, suffix = name.rpartition(".")
            name = f"{stem}.rank{trainer.global_rank}{dot}{suffix}" if dot else f"{name}.rank{trainer.global_rank}"
        self.path = log_dir / name
        self._write(self.path, class_names_of(trainer))
        self._announce(self.path)

    def _write(self, path: Path, names: list[str]) -> None:
        rows = torch.cat(self._rows) if self._rows else torch.empty(0, 2, dtype=torch.float64)
        path.parent.mkdir(parents=True, exist_ok=True)
        with path.open("w", newline="") as file:
            writer = csv.writer(file)
            writer.writerow(["index", "prediction", "class_name", "probability"])
            for index, (prediction, probability) in enumerate(rows.tolist()):
                label = int(prediction)
                name = names[label] if label < len(names) else str(label)
                writer.writerow([index, label, name, f"{probability:.6f}"])

    @rank_zero_only
    def _announce(self, path: Path) -> None:
        from rich.console import Console
        from rich.markup import escape

        count = sum(len(rows) for rows in self._rows)
        message = f"[bold]predictions[/bold] ({count} rows): {escape(str(path))}"
        Console().print(message, highlight=False, soft_wrap=True)
