from functools import partial

import lightning.pytorch as pl
import pytest
import torch

from {{ cookiecutter.project_slug }}.model import Classifier


def test_forward_gives_one_logit_per_class():
    model = Classifier(input_shape=(3, 8, 8), hidden_size=16, num_classes=4)
    assert model(torch.zeros(5, 3, 8, 8)).shape == (5, 4)


def test_the_optimizer_comes_from_the_injected_callable():
    model = Classifier(optimizer=partial(torch.optim.SGD, lr=0.5))
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD) and optimizer.param_groups[0]["lr"] == 0.5


def test_learns_the_synthetic_data(synthetic_data):
    pl.seed_everything(0)
    model = Classifier(hidden_size=32, optimizer=partial(torch.optim.Adam, lr=0.01))
    trainer = pl.Trainer(
        max_epochs=3,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
    )
    (before,) = trainer.validate(model, datamodule=synthetic_data, verbose=False)
    trainer.fit(model, datamodule=synthetic_data)
    (after,) = trainer.test(model, datamodule=synthetic_data, verbose=False)
    assert before["val_acc"] < 0.5  # chance is 0.1
    assert after["test_acc"] > 0.9


def test_bad_arguments_are_refused_with_the_argument_named():
    with pytest.raises(ValueError, match="`dropout` must lie in"):
        Classifier(dropout=1.0)
    with pytest.raises(ValueError, match="`hidden_size` must be a positive"):
        Classifier(hidden_size=0)
