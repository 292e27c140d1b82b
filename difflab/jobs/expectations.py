"""Expectations: a recipe's `[expect]` lines checked against what a run measured.

Each set line becomes one pass/fail result naming the limit and the value seen; a
number that was not measured (no evaluation, no logged loss) is a failure that
says why, never a silent pass.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass

from difflab.recipe import ExpectConfig


@dataclass
class ExpectationResult:
    """One `[expect]` line: what was asked, what was seen, and whether it holds."""

    name: str
    limit: float
    value: float | None
    passed: bool
    note: str = ""

    def line(self) -> str:
        seen = "not measured" if self.value is None else f"{self.value:.4g}"
        verdict = "pass" if self.passed else "FAIL"
        return f"{verdict}  expect.{self.name} = {self.limit:g}: {seen}{f' ({self.note})' if self.note else ''}"


# expectation -> (where its value lives in the summary, True when the value must exceed the limit)
_MEASURES: dict[str, tuple[str, bool]] = {
    "final_loss_below": ("final_loss", False),
    "loss_drop_factor_above": ("loss_drop_factor", True),
    "frechet_normalised_below": ("eval.frechet_normalised", False),
    "confidence_above": ("eval.confidence", True),
    "class_entropy_above": ("eval.class_entropy_bits", True),
    "class_accuracy_above": ("eval.class_accuracy", True),
    "guidance_loss_ratio_below": ("guidance.loss_ratio", False),
    "reconstruction_psnr_above": ("invert.psnr", True),
    "reconstruction_mse_below": ("invert.mse", False),
    "vae_psnr_above": ("vae.psnr_db", True),
}


def check_expectations(expect: ExpectConfig, summary: dict) -> list[ExpectationResult]:
    """Every set expectation checked against a run's summary (its losses and its `eval` numbers)."""
    results = []
    if not expect.enabled:
        return results
    for name, limit in expect.model_dump(exclude_none=True, exclude={"enabled"}).items():
        where, above = _MEASURES[name]
        value = _lookup(summary, where)
        if value is None:
            reason = summary.get("eval_skipped") if where.startswith("eval.") else None
            results.append(ExpectationResult(name, limit, None, False, reason or f"no {where} in the summary"))
            continue
        passed = value > limit if above else value < limit
        results.append(ExpectationResult(name, limit, float(value), passed))
    return results


def loss_drop_factor(losses: list[float]) -> float | None:
    """The first logged loss divided by the last (how many times the loss fell)."""
    if len(losses) < 2 or losses[-1] <= 0:
        return None
    return losses[0] / losses[-1]


def as_records(results: list[ExpectationResult]) -> list[dict]:
    return [asdict(r) for r in results]


def _lookup(summary: dict, where: str):
    node = summary
    for part in where.split("."):
        if not isinstance(node, dict):
            return None
        node = node.get(part)
    return node
