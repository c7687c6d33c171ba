"""A response surface over a code-proportion sweep: a metric as a function of
the code fraction p (per category, or per data source's held-out bits per byte),
and the fraction that optimises it.

Two forms, each three parameters:

- "exp": a + b * exp(c * p), the data-mixing-law form (Ye et al., 2024,
  fit loss against a mixture proportion with an exponential); monotone in p,
  so its optimum lies at 0 or 1.
- "quadratic": a + b * p + c * p^2, the simplest form with an interior
  optimum (the paper's NL reasoning peaks near 25% code).

The form is chosen by leave-one-out error over the fitted points (in-fit
error when too few points remain), and the fit is validated on arms held out
of the fit altogether (a sweep's held-out arm and its random mixtures): their
prediction errors, RMSE, and the Spearman rank correlation of predicted with
actual values (RegMix's test of a mixture law: does it rank unseen mixtures
right?), so the reader sees how far to trust the predicted best fraction.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Collection, Sequence

import numpy as np
from scipy import optimize, stats


def _quadratic(p, a, b, c):
    return a + b * p + c * p * p


def _exp(p, a, b, c):
    return a + b * np.exp(c * p)


@dataclasses.dataclass(frozen=True)
class Form:
    name: str
    fn: Callable
    num_params: int
    formula: str


FORMS: dict[str, Form] = {
    "quadratic": Form("quadratic", _quadratic, 3, "a + b*p + c*p^2"),
    "exp": Form("exp", _exp, 3, "a + b*exp(c*p)"),
}

_EXP_RATE_BOUND = 20.0  # |c| beyond this is a step function, not a trend


@dataclasses.dataclass(frozen=True)
class Fit:
    form: str
    params: tuple[float, ...]
    rmse: float  # over the fitted points

    def predict(self, p) -> np.ndarray:
        return FORMS[self.form].fn(np.asarray(p, dtype=float), *self.params)

    def best_fraction(
        self, lo: float = 0.0, hi: float = 1.0, *, minimise: bool = False
    ) -> tuple[float, float]:
        """(p, value) maximising (or minimising) the fit over [lo, hi]."""
        grid = np.linspace(lo, hi, 1001)
        values = self.predict(grid)
        i = int(np.argmin(values) if minimise else np.argmax(values))
        return float(grid[i]), float(values[i])

    def describe(self) -> str:
        names = "abc"
        return ", ".join(f"{names[i]}={v:.4g}" for i, v in enumerate(self.params))


def fit(form: str, p: Sequence[float], y: Sequence[float]) -> Fit:
    """Least-squares fit of one form. Raises ValueError with too few points."""
    f = FORMS[form]
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if len(p) < f.num_params:
        raise ValueError(f"{form}: {len(p)} points cannot fit {f.num_params} parameters")
    if form == "quadratic":
        c, b, a = np.polyfit(p, y, 2)
        params = (float(a), float(b), float(c))
    else:
        params = _fit_exp(p, y)
    residual = f.fn(p, *params) - y
    return Fit(form, params, float(np.sqrt(np.mean(residual**2))))


def _fit_exp(p: np.ndarray, y: np.ndarray) -> tuple[float, float, float]:
    # Variable projection: for a fixed rate c the model is linear in (a, b),
    # so the least-squares error is a function of c alone. Scan it, refine the
    # best bracket with a bounded scalar search, then polish all three
    # parameters with curve_fit.
    def solve(c):
        design = np.stack([np.ones_like(p), np.exp(c * p)], axis=1)
        (a, b), *_ = np.linalg.lstsq(design, y, rcond=None)
        return float(np.sum((_exp(p, a, b, c) - y) ** 2)), (float(a), float(b), float(c))

    grid = np.linspace(-_EXP_RATE_BOUND, _EXP_RATE_BOUND, 81)
    errors = [solve(c)[0] for c in grid]
    i = int(np.argmin(errors))
    lo, hi = grid[max(i - 1, 0)], grid[min(i + 1, len(grid) - 1)]
    result = optimize.minimize_scalar(
        lambda c: solve(c)[0], bounds=(lo, hi), method="bounded", options={"xatol": 1e-10}
    )
    best_sse, best = solve(float(result.x))
    try:
        with warnings.catch_warnings(), np.errstate(over="ignore", invalid="ignore"):
            # An exact fit has no covariance, and a wandering rate may
            # overflow on the way; only the final parameters matter here.
            warnings.simplefilter("ignore", optimize.OptimizeWarning)
            polished, _ = optimize.curve_fit(_exp, p, y, p0=best, maxfev=2000)
            sse = float(np.sum((_exp(p, *polished) - y) ** 2))
        if np.isfinite(sse) and sse < best_sse and abs(polished[2]) <= _EXP_RATE_BOUND:
            best = tuple(float(v) for v in polished)
    except (RuntimeError, ValueError, FloatingPointError):
        pass
    return best


def leave_one_out_rmse(form: str, p: Sequence[float], y: Sequence[float]) -> float:
    """RMSE of predicting each point from a fit to the others (NaN when the
    others are too few)."""
    p, y = np.asarray(p, dtype=float), np.asarray(y, dtype=float)
    if len(p) - 1 < FORMS[form].num_params:
        return math.nan
    errors = []
    for i in range(len(p)):
        keep = np.arange(len(p)) != i
        errors.append(float(fit(form, p[keep], y[keep]).predict(p[i])) - y[i])
    return float(np.sqrt(np.mean(np.square(errors))))


@dataclasses.dataclass
class HeldOut:
    name: str
    fraction: float
    actual: float
    predicted: float

    @property
    def error(self) -> float:
        return self.predicted - self.actual


@dataclasses.dataclass
class Surface:
    """The chosen fit of one metric over a sweep."""

    fit: Fit
    candidates: dict[str, Fit]
    loo_rmse: dict[str, float]
    best_fraction: float
    best_score: float
    validation: list[HeldOut]  # the held-out points, by code fraction

    @property
    def held_out(self) -> HeldOut | None:
        """The first held-out point (a sweep with one held-out arm)."""
        return self.validation[0] if self.validation else None

    @property
    def held_out_rmse(self) -> float:
        if not self.validation:
            return math.nan
        return float(np.sqrt(np.mean([h.error**2 for h in self.validation])))

    @property
    def spearman(self) -> float:
        """Rank correlation of predicted with actual over the held-out points
        (NaN with fewer than three, or when either side is constant)."""
        if len(self.validation) < 3:
            return math.nan
        actual = [h.actual for h in self.validation]
        predicted = [h.predicted for h in self.validation]
        if len(set(actual)) < 2 or len(set(predicted)) < 2:
            return math.nan
        return float(stats.spearmanr(actual, predicted).statistic)


def response_surface(
    points: Sequence[tuple[str, float, float]],
    *,
    held_out: str | Collection[str] = (),
    forms: Sequence[str] = ("quadratic", "exp"),
    minimise: bool = False,
) -> Surface:
    """Fits (name, code fraction, value) points, leaving the `held_out` names
    out to validate on; the best fraction maximises the fit (minimises it with
    `minimise`, for a loss).

    Raises ValueError when the points left are too few for any form.
    """
    held = {held_out} if isinstance(held_out, str) else set(held_out)
    fitted = [(n, p, y) for n, p, y in points if n not in held]
    p = np.array([t[1] for t in fitted])
    y = np.array([t[2] for t in fitted])
    candidates = {}
    for form in forms:
        try:
            candidates[form] = fit(form, p, y)
        except ValueError:
            continue
    if not candidates:
        raise ValueError(f"{len(fitted)} points are too few for any form of {list(forms)}")
    loo = {form: leave_one_out_rmse(form, p, y) for form in candidates}
    if all(math.isfinite(v) for v in loo.values()):
        chosen = min(candidates, key=lambda f: (loo[f], forms.index(f)))
    else:
        chosen = min(candidates, key=lambda f: (round(candidates[f].rmse, 12), forms.index(f)))
    best = candidates[chosen]
    lo, hi = float(min(t[1] for t in points)), float(max(t[1] for t in points))
    best_p, best_y = best.best_fraction(lo, hi, minimise=minimise)
    validation = sorted(
        (
            HeldOut(n, float(hp), float(hy), float(best.predict(hp)))
            for n, hp, hy in points
            if n in held
        ),
        key=lambda h: h.fraction,
    )
    return Surface(best, candidates, loo, best_p, best_y, validation)
