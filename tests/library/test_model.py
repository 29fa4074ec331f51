"""Networks and the LightningModule: shapes, optimizer injection, schedulers, hyperparameters."""

import lightning.pytorch as pl
import pytest
import torch
from lightning.pytorch.demos.boring_classes import RandomDataset
from torch.utils.data import DataLoader

from lit_nnopt import CNN, MLP, MNISTClassifier
from lit_nnopt.model import accepts_fused, weight_decay_groups


@pytest.mark.parametrize("net", [MLP(), MLP([256, 64], batch_norm=True, dropout=0.5), CNN()])
def test_networks_map_images_to_ten_logits(net):
    assert net(torch.rand(5, 1, 28, 28)).shape == (5, 10)


def test_keras_init_is_glorot_uniform_with_zero_bias():
    net = MLP(init="keras")
    dense = net.layers[1]
    limit = (6 / (784 + 128)) ** 0.5
    assert dense.weight.abs().max() <= limit and dense.weight.abs().max() > 0.9 * limit
    assert torch.count_nonzero(dense.bias) == 0


def test_l2_penalty_is_keras_formula_on_hidden_kernels_only():
    net = MLP([16, 8], l2=0.01)
    expected = 0.01 * (net.layers[1].weight.pow(2).sum() + net.layers[3].weight.pow(2).sum())
    assert torch.allclose(net.regularization_loss(), expected)
    assert MLP().regularization_loss() == 0.0


def test_loss_includes_the_regularization_penalty():
    model = MNISTClassifier(net=MLP([16], l2=0.1))
    x, y = torch.rand(4, 1, 28, 28), torch.tensor([0, 1, 2, 3])
    logits = model(x)
    plain = torch.nn.functional.cross_entropy(logits, y)
    assert torch.allclose(model._loss(logits, y), plain + model.net.regularization_loss())


def test_default_optimizer_is_adam():
    optimizer = MNISTClassifier().configure_optimizers()
    assert isinstance(optimizer, torch.optim.Adam) and optimizer.defaults["lr"] == 1e-3
    assert optimizer.defaults["fused"], "fused by default where torch has it"


def test_any_torch_optimizer_is_injected_with_its_arguments():
    model = MNISTClassifier(optimizer={"class_path": "torch.optim.SGD", "init_args": {"lr": 0.01, "momentum": 0.9}})
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, torch.optim.SGD)
    assert optimizer.defaults["lr"] == 0.01 and optimizer.defaults["momentum"] == 0.9


def test_scheduler_interval_and_frequency_reach_lightning():
    model = MNISTClassifier(
        lr_scheduler={"class_path": "torch.optim.lr_scheduler.StepLR", "init_args": {"step_size": 3}},
        lr_scheduler_interval="step",
        lr_scheduler_frequency=2,
    )
    config = model.configure_optimizers()
    scheduler = config["lr_scheduler"]
    assert isinstance(scheduler["scheduler"], torch.optim.lr_scheduler.StepLR)
    assert scheduler["interval"] == "step" and scheduler["frequency"] == 2


def test_weight_decay_skips_biases_and_norm_layers():
    net = MLP([16], batch_norm=True)
    decay, exempt = weight_decay_groups(net, 0.05)
    assert decay["weight_decay"] == 0.05 and exempt["weight_decay"] == 0.0
    assert {id(p) for p in decay["params"]} == {id(net.layers[1].weight), id(net.layers[4].weight)}
    assert len(exempt["params"]) == 4  # two biases, batch-norm weight and bias


def test_adamw_gets_the_two_groups():
    model = MNISTClassifier(optimizer={"class_path": "torch.optim.AdamW", "init_args": {"weight_decay": 0.01}})
    groups = model.configure_optimizers().param_groups
    assert [group["weight_decay"] for group in groups] == [0.01, 0.0]


def test_invalid_scheduler_interval_lists_choices():
    with pytest.raises(ValueError, match="step, epoch"):
        MNISTClassifier(lr_scheduler_interval="batch")


class _Images(RandomDataset):
    def __getitem__(self, index):
        return self.data[index].reshape(1, 28, 28), index % 10


def test_python_built_checkpoint_keeps_primitive_hparams_and_loads(tmp_path):
    model = MNISTClassifier(net=MLP([32], dropout=0.1))
    trainer = pl.Trainer(max_steps=2, logger=False, enable_progress_bar=False, default_root_dir=tmp_path)
    trainer.fit(model, DataLoader(_Images(784, 8), batch_size=4))
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    checkpoint = torch.load(path, weights_only=True)
    assert checkpoint["hyper_parameters"]["net"] == {
        "class_path": "lit_nnopt.networks.MLP",
        "init_args": MLP([32], dropout=0.1).init_args,
    }
    restored = MNISTClassifier.load_from_checkpoint(path)
    assert torch.equal(restored.net.layers[1].weight, model.net.layers[1].weight)


def test_fused_is_left_alone_when_the_config_chooses():
    model = MNISTClassifier(optimizer={"class_path": "torch.optim.Adam", "init_args": {"foreach": True}})
    optimizer = model.configure_optimizers()
    assert optimizer.defaults["foreach"] and not optimizer.defaults["fused"]
    rmsprop = MNISTClassifier(optimizer={"class_path": "torch.optim.RMSprop", "init_args": {"lr": 0.01}})
    assert "fused" not in rmsprop.configure_optimizers().defaults


def test_fused_by_default_when_the_cli_fills_in_torchs_none():
    model = MNISTClassifier(
        optimizer={"class_path": "torch.optim.Adam", "init_args": {"lr": 0.001, "fused": None, "foreach": None}}
    )
    assert model.configure_optimizers().defaults["fused"]


class AdamFusedOnCudaOnly(torch.optim.Adam):
    """Adam as torch 2.2 had it: a ``fused`` argument, and a refusal of ``fused=True`` off CUDA."""

    def __init__(self, params, lr: float = 1e-3, fused: bool | None = None) -> None:
        params = list(params)
        tensors = [p for group in params for p in group["params"]] if isinstance(params[0], dict) else params
        if fused and any(p.device.type != "cuda" for p in tensors):
            raise RuntimeError("`fused=True` requires all the params to be floating point Tensors of supported devices")
        super().__init__(params, lr=lr, fused=fused)


def test_fused_is_asked_of_torch_not_read_from_the_signature():
    model = MNISTClassifier(optimizer={"class_path": f"{__name__}.AdamFusedOnCudaOnly", "init_args": {"lr": 0.01}})
    optimizer = model.configure_optimizers()
    assert isinstance(optimizer, AdamFusedOnCudaOnly) and not optimizer.defaults["fused"]
    assert not accepts_fused(AdamFusedOnCudaOnly, "cpu")
    assert not accepts_fused(torch.optim.RMSprop, "cpu"), "no `fused` argument at all"


class _Float16Trainer:
    """What ``configure_optimizers`` reads of a trainer on a GPU with float16 loss scaling (CPUs switch to bf16)."""

    precision = "16-mixed"


def test_fused_is_left_alone_under_float16_loss_scaling():
    model, trainer = MNISTClassifier(), _Float16Trainer()
    model.trainer = trainer
    assert not model.configure_optimizers().defaults["fused"]


# -- compile: in place, so checkpoints keep the network's own keys --------------------------------


def _tiny_trainer(tmp_path, **kwargs) -> pl.Trainer:
    defaults = {
        "accelerator": "cpu",
        "logger": False,
        "enable_progress_bar": False,
        "enable_model_summary": False,
        "default_root_dir": tmp_path,
    }
    return pl.Trainer(**{**defaults, **kwargs})


def _images(samples: int = 8) -> DataLoader:
    return DataLoader(_Images(784, samples), batch_size=4)


@pytest.mark.slow  # torch.compile takes half a minute on a CPU
def test_checkpoints_of_compiled_and_uncompiled_models_load_into_either(tmp_path):
    compiled = MNISTClassifier(net=MLP([8]), compile=True)
    trainer = _tiny_trainer(tmp_path, max_steps=2)
    trainer.fit(compiled, _images())
    assert compiled.net._compiled_call_impl is not None, "compiled in place"
    trainer.save_checkpoint(tmp_path / "compiled.ckpt")
    state = torch.load(tmp_path / "compiled.ckpt", weights_only=True)["state_dict"]
    assert not any("_orig_mod" in key for key in state)

    uncompiled = MNISTClassifier.load_from_checkpoint(tmp_path / "compiled.ckpt", compile=False)
    assert torch.equal(uncompiled.net.layers[1].weight, compiled.net.layers[1].weight)
    plain = MNISTClassifier(net=MLP([8]))
    _tiny_trainer(tmp_path, max_steps=1).fit(plain, _images())
    plain_path = tmp_path / "plain.ckpt"
    torch.save({"state_dict": plain.state_dict()}, plain_path)
    recompiled = MNISTClassifier(net=MLP([8]), compile=True)
    recompiled.configure_model()
    recompiled.load_state_dict(torch.load(plain_path, weights_only=True)["state_dict"])
    assert torch.equal(recompiled.net.layers[1].weight, plain.net.layers[1].weight)


def test_test_validate_and_predict_from_a_checkpoint_work_with_compile(tmp_path):
    model = MNISTClassifier(net=MLP([8]), compile=True)
    trainer = _tiny_trainer(tmp_path, max_steps=2, limit_val_batches=1)
    trainer.fit(model, _images(), _images())
    path = tmp_path / "model.ckpt"
    trainer.save_checkpoint(path)
    fresh = MNISTClassifier(net=MLP([8]), compile=True)
    evaluator = _tiny_trainer(tmp_path)
    (tested,) = evaluator.test(fresh, _images(), ckpt_path=path, verbose=False)
    (validated,) = evaluator.validate(fresh, _images(), ckpt_path=path, verbose=False)
    predictions = evaluator.predict(fresh, _images(), ckpt_path=path)
    assert set(tested) == {"test_loss", "test_acc"} and set(validated) == {"val_loss", "val_acc"}
    assert torch.cat(predictions).shape == (8,)
    assert torch.equal(fresh.net.layers[1].weight, model.net.layers[1].weight)


# -- every metric reaches every logger, every epoch ------------------------------------------------


def _csv_rows(path) -> list[dict[str, str]]:
    import csv

    with open(path) as file:
        return list(csv.DictReader(file))


@pytest.mark.parametrize("steps", [1, 3], ids=["one-batch-per-step", "StepsPerExecution-3"])
def test_loggers_receive_every_train_val_and_test_metric_every_epoch(steps, tmp_path):
    from lightning.pytorch.loggers import CSVLogger, TensorBoardLogger
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    from lit_nnopt.callbacks import StepsPerExecution

    csv_logger, tensorboard = CSVLogger(tmp_path, name="csv"), TensorBoardLogger(tmp_path, name="tb")
    # 11 batches an epoch: not a multiple of log_every_n_steps, and fewer than it.
    trainer = _tiny_trainer(
        tmp_path,
        max_epochs=3,
        logger=[csv_logger, tensorboard],
        log_every_n_steps=4,
        enable_checkpointing=False,
        callbacks=[StepsPerExecution(steps)],
    )
    model = MNISTClassifier(net=MLP([8]))
    train, val = DataLoader(_Images(784, 44), batch_size=4), _images()
    trainer.fit(model, train, val)
    trainer.test(model, _images(), verbose=False)
    csv_logger.save()
    tensorboard.experiment.flush()

    train_and_val = ("train_loss", "train_acc", "val_loss", "val_acc")
    rows = _csv_rows(f"{csv_logger.log_dir}/metrics.csv")
    for epoch in range(3):
        logged = {key for row in rows if row["epoch"] == str(epoch) for key, value in row.items() if value}
        assert set(train_and_val) <= logged, (epoch, logged)
    assert any(row["test_loss"] and row["test_acc"] for row in rows)

    events = EventAccumulator(tensorboard.log_dir)
    events.Reload()
    for tag in train_and_val:
        assert len(events.Scalars(tag)) == 3, tag
    for tag in ("test_loss", "test_acc"):
        assert len(events.Scalars(tag)) == 1, tag
