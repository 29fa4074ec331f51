"""Refuse answers that would generate a project that cannot be imported or installed.

Cookiecutter renders this file with the answers and runs it before writing any file; a
non-zero exit stops the generation and removes the folder it had just created.
"""

from __future__ import annotations

import keyword
import re
import sys

SLUG = {{ cookiecutter.project_slug | jsonify }}
REQUIREMENT = {{ cookiecutter.lit_nnopt_requirement | jsonify }}

# The generated package imports these; a package of the same name would shadow them.
_IMPORTED = {"lit_nnopt", "lightning", "torch", "torchmetrics", "torchvision", "jsonargparse", "wandb", "pytest"}
# Folders of the generated project itself.
_FOLDERS = {"configs", "tests", "runs", "data"}


def suggest_slug(name: str) -> str:
    """A valid slug close to ``name``: lowercase, runs of other characters turned into ``_``."""
    slug = re.sub(r"[^a-z0-9]+", "_", name.lower()).strip("_")
    if not slug or slug[0].isdigit():
        slug = f"project_{slug}".rstrip("_")
    return slug


def slug_problem(slug: str) -> str | None:
    """Why ``slug`` cannot name the generated package, or None when it can."""
    if not re.fullmatch(r"[a-z_][a-z0-9_]*", slug):
        return "it must be a lowercase Python identifier: letters a-z, digits and underscores, not starting with a digit"
    if keyword.iskeyword(slug):
        return "it is a Python keyword"
    if slug in getattr(sys, "stdlib_module_names", ()) or slug in _IMPORTED:
        return f"it would shadow the module {slug!r} that Python or the project imports"
    if slug in _FOLDERS:
        return f"it names one of the project's own folders ({', '.join(sorted(_FOLDERS))})"
    return None


def requirement_problem(requirement: str) -> str | None:
    """Why ``requirement`` is not a requirement on lit_nnopt, or None when it is."""
    if not re.match(r"\s*lit[-_.]?nnopt\b", requirement, flags=re.IGNORECASE):
        return "it must be a requirement on lit_nnopt, e.g. 'lit_nnopt>=0.1' or 'lit_nnopt @ git+https://...'"
    return None


def main() -> int:
    problems = []
    slug_reason = slug_problem(SLUG)
    if slug_reason:
        suggestion = suggest_slug(SLUG)
        if slug_problem(suggestion):
            suggestion = f"{suggestion}_project"
        problems.append(
            f"project_slug {SLUG!r} cannot name the project's package: {slug_reason}. "
            f"Choose another, e.g. project_slug={suggestion}."
        )
    requirement_reason = requirement_problem(REQUIREMENT)
    if requirement_reason:
        problems.append(f"lit_nnopt_requirement {REQUIREMENT!r} is not usable: {requirement_reason}.")
    for problem in problems:
        sys.stderr.write(f"error: {problem} Nothing was generated.\n")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
