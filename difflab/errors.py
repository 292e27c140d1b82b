"""Errors for people: what was wrong, where, and what would be right.

The exit code travels with the error: 2 for bad input (a recipe, a path, a file),
1 for a job that failed while running.
"""

from __future__ import annotations


class DifflabError(Exception):
    """Base of difflab's own errors; `exit_code` is what the CLI returns."""

    exit_code = 1


class InputError(DifflabError):
    """Bad input: a missing path, a corrupt file, an unusable checkpoint."""

    exit_code = 2


class RecipeError(InputError):
    """A recipe that does not validate; one line per problem, each naming file and key."""

    def __init__(self, source: str, problems: list[str]):
        self.source = source
        self.problems = list(problems)
        super().__init__("\n".join(f"{source}: {p}" for p in self.problems))


class JobFailed(DifflabError):
    """A job that started and could not finish (NaN loss, out of memory, ...)."""

    exit_code = 1
