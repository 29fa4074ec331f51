"""Remove the files of the options that were not chosen.

Cookiecutter renders this file with the answers and runs it inside the generated project.
"""

from __future__ import annotations

import shutil
from pathlib import Path

# (path in the generated project, whether the answers keep it)
OPTIONAL_FILES = [
    ("LICENSE", {{ cookiecutter.license != "none" }}),
    ("configs/wandb.yaml", {{ cookiecutter.use_wandb }}),
    ("tests/test_wandb.py", {{ cookiecutter.use_wandb }}),
    (".github", {{ cookiecutter.github_actions }}),
]


def main() -> None:
    for name, keep in OPTIONAL_FILES:
        path = Path(name)
        if keep:
            continue
        if path.is_dir():
            shutil.rmtree(path)
        elif path.exists():
            path.unlink()


if __name__ == "__main__":
    main()
