"""{{ cookiecutter.project_slug }}: a LightningModule, a DataModule and a LightningCLI entry point."""

from {{ cookiecutter.project_slug }}.data import SyntheticDataModule
from {{ cookiecutter.project_slug }}.model import Classifier

__all__ = ["Classifier", "SyntheticDataModule"]
__version__ = "0.1.0"
