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


def reason(error: BaseException, limit: int = 300) -> str:
    """An exception's message in one line for a person: its first line, and when that only
    announces a list ("Error(s) in loading state_dict for BasicUNet:"), the list's first item."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    if not lines:
        return type(error).__name__
    text = f"{lines[0]} {lines[1]}" if lines[0].endswith(":") and len(lines) > 1 else lines[0]
    return text if len(text) <= limit else text[:limit - 1] + "…"
