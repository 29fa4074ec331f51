"""A DDP fit on two CPU processes over a plain shuffled ``DataLoader``, for tests.

Run as ``python -m tests.helpers.ddp_dataloader_fit STEPS OUT_DIR``.

Lightning gives the loader a ``DistributedSampler`` (shuffled, reseeded every epoch). Each rank
writes its weights, global step and the labels of every batch it trained on to ``OUT_DIR/rank{N}.pt``.
"""

from __future__ import annotations

import sys
from pathlib import Path

import lightning.pytorch as pl
import torch
from torch.nn import functional as F
from torch.utils.data import DataLoader, TensorDataset

from lit_nnopt.callbacks import StepsPerExecution


class LabelRecorder(pl.LightningModule):
    def __init__(self) -> None:
        super().__init__()
        self.layer = torch.nn.Linear(16, 4)
        self.dropout = torch.nn.Dropout(0.3)
        self.labels: list[torch.Tensor] = []

    def training_step(self, batch, batch_idx):
        inputs, labels = batch
        self.labels.append(labels.clone())
        loss = F.cross_entropy(self.layer(self.dropout(inputs)), labels)
        self.log("train_loss", loss, on_step=False, on_epoch=True, sync_dist=True)
        return loss

    def configure_optimizers(self):
        return torch.optim.Adam(self.parameters(), lr=0.01)


def main(steps: int, out_dir: Path) -> None:
    pl.seed_everything(3, verbose=False)
    generator = torch.Generator().manual_seed(0)
    inputs, labels = torch.randn(200, 16, generator=generator), torch.randint(0, 4, (200,), generator=generator)
    model = LabelRecorder()
    trainer = pl.Trainer(
        accelerator="cpu",
        devices=2,
        strategy="ddp",
        max_epochs=3,
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[StepsPerExecution(steps)],
    )
    trainer.fit(model, DataLoader(TensorDataset(inputs, labels), batch_size=8, shuffle=True))
    out_dir.mkdir(parents=True, exist_ok=True)
    state = {"weights": model.state_dict(), "global_step": trainer.global_step, "labels": torch.cat(model.labels)}
    torch.save(state, out_dir / f"rank{trainer.global_rank}.pt")


if __name__ == "__main__":
    main(int(sys.argv[1]), Path(sys.argv[2]))
