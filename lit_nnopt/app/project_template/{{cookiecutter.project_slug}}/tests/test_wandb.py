import wandb
from lightning.pytorch.loggers import WandbLogger

from {{ cookiecutter.project_slug }}.cli import build_cli


def test_the_wandb_config_logs_an_offline_run(tmp_path, configs, quick_fit_args):
    both = ["--config", str(configs / "default.yaml"), "--config", str(configs / "wandb.yaml")]
    try:
        cli = build_cli(["fit", *both, *quick_fit_args, "--trainer.max_epochs", "1"])
    finally:
        wandb.finish()
    assert any(isinstance(logger, WandbLogger) for logger in cli.trainer.loggers)
    runs = list(tmp_path.rglob("offline-run-*"))
    assert runs and list(runs[0].glob("*.wandb")), f"no offline W&B run under {tmp_path}"
