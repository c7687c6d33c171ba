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
of the fit altogether (a sweep's held-out arm, its random mixtures and, through
`with_extrapolation`, its largest fraction, so that one held-out point lies
beyond the fitted range). A law earns trust only against baselines, so each
held-out point carries, beside the law's prediction:

- the interpolation baseline (`interpolate`): straight lines between the
  fitted arms' values, extended linearly beyond them. A law that does not
  beat it adds nothing over the arms already run.
- the seed noise: the standard error of the held-out arm's mean over seeds.
  A law whose error is within it is as good as these means can show.

The Spearman rank correlation of predicted with actual values (RegMix's test
of a mixture law: does it rank unseen mixtures right?) is computed only over
at least MIN_RANK_POINTS held-out points; over fewer it takes too few values
to mean anything.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from typing import Callable, Collection, Mapping, Sequence

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


def interpolate(p_fit: Sequence[float], y_fit: Sequence[float], p) -> np.ndarray:
    """The baseline a law must beat: straight lines between the fitted points'
    values, piecewise linear in the fraction. Beyond the fitted range the end
    segment is extended (linear extrapolation from the two nearest fitted
    fractions), so an extrapolated point is held to the trend the data show
    there rather than to a constant. Points at one fraction are averaged; with a
    single fraction the baseline is that constant."""
    p_fit, y_fit = np.asarray(p_fit, dtype=float), np.asarray(y_fit, dtype=float)
    xs = np.unique(p_fit)
    ys = np.array([y_fit[p_fit == x].mean() for x in xs])
    p = np.asarray(p, dtype=float)
    if len(xs) == 1:
        return np.full_like(p, ys[0])
    out = np.interp(p, xs, ys)
    below, above = p < xs[0], p > xs[-1]
    out[below] = ys[0] + (p[below] - xs[0]) * (ys[1] - ys[0]) / (xs[1] - xs[0])
    out[above] = ys[-1] + (p[above] - xs[-1]) * (ys[-1] - ys[-2]) / (xs[-1] - xs[-2])
    return out


def seed_se(values: Sequence[float] | None) -> float:
    """Standard error of a mean over seeds (NaN with fewer than two)."""
    if values is None or len(values) < 2:
        return math.nan
    return float(np.std(values, ddof=1) / math.sqrt(len(values)))


# Rank correlation over fewer held-out points takes too few values to mean
# anything: over three it can only be +-1 or +-0.5.
MIN_RANK_POINTS = 5

# Errors closer than this are equal: the differences are rounding.
_TIE = 1e-9


def with_extrapolation(
    points: Sequence[tuple[str, float, float]],
    held_out: Collection[str],
    *,
    min_fitted: int = max(f.num_params for f in FORMS.values()) + 1,
) -> list[str]:
    """The held-out names, plus the largest-fraction point when none of them lies
    beyond the fitted range, so that the law is tested on an extrapolation as
    well as on interpolations. Added only when `min_fitted` distinct fractions
    remain in the fit (by default enough to choose the form left-one-out)."""
    held = list(held_out)
    fitted = [(n, p) for n, p, _ in points if n not in held]
    if not fitted:
        return held
    lo, hi = min(p for _, p in fitted), max(p for _, p in fitted)
    if any(p < lo or p > hi for n, p, _ in points if n in held):
        return held
    top = [n for n, p in fitted if p == hi]
    if len({p for _, p in fitted if p != hi}) < min_fitted:
        return held
    return held + top


@dataclasses.dataclass
class HeldOut:
    name: str
    fraction: float
    actual: float
    predicted: float  # by the law
    interpolated: float  # by the interpolation baseline (`interpolate`)
    extrapolation: bool = False  # beyond the fitted range of fractions
    seed_se: float = math.nan  # standard error of `actual` over seeds

    @property
    def error(self) -> float:
        return self.predicted - self.actual

    @property
    def interpolation_error(self) -> float:
        return self.interpolated - self.actual


def _rms(values: Sequence[float]) -> float:
    return float(np.sqrt(np.mean(np.square(values)))) if len(values) else math.nan


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
        return _rms([h.error for h in self.validation])

    @property
    def interpolation_rmse(self) -> float:
        """The interpolation baseline's RMSE over the held-out points."""
        return _rms([h.interpolation_error for h in self.validation])

    @property
    def seed_noise(self) -> float:
        """Root mean square of the held-out points' standard errors over seeds:
        the RMSE even a true law would show against these means (NaN unless
        every held-out point has several seeds)."""
        return _rms([h.seed_se for h in self.validation])

    @property
    def beats_interpolation(self) -> bool:
        return bool(self.validation) and self.held_out_rmse < self.interpolation_rmse - _TIE

    @property
    def within_seed_noise(self) -> bool:
        return math.isfinite(self.seed_noise) and self.held_out_rmse <= self.seed_noise + _TIE

    def verdict(self) -> str:
        """The law against its baselines, in words."""
        if not self.validation:
            return "not validated: no held-out points"
        parts = [
            "the law beats interpolation"
            if self.beats_interpolation
            else "the law does not beat interpolation"
        ]
        if self.within_seed_noise:
            parts.append("its error is within the seed noise")
        elif math.isfinite(self.seed_noise):
            parts.append("its error exceeds the seed noise")
        return "; ".join(parts)

    @property
    def spearman(self) -> float:
        """Rank correlation of predicted with actual over the held-out points
        (NaN with fewer than MIN_RANK_POINTS, or when either side is constant:
        `spearman_note` says why)."""
        if self.spearman_note:
            return math.nan
        actual = [h.actual for h in self.validation]
        predicted = [h.predicted for h in self.validation]
        return float(stats.spearmanr(actual, predicted).statistic)

    @property
    def spearman_note(self) -> str:
        """Why the rank correlation is not computed; empty when it is."""
        n = len(self.validation)
        if n < MIN_RANK_POINTS:
            return f"not computed: {n} held-out points (needs {MIN_RANK_POINTS})"
        if len({h.actual for h in self.validation}) < 2:
            return "not computed: the held-out values are all equal"
        if len({h.predicted for h in self.validation}) < 2:
            return "not computed: the predictions are all equal"
        return ""


def response_surface(
    points: Sequence[tuple[str, float, float]],
    *,
    held_out: str | Collection[str] = (),
    forms: Sequence[str] = ("quadratic", "exp"),
    minimise: bool = False,
    seeds: Mapping[str, Sequence[float]] | None = None,
) -> Surface:
    """Fits (name, code fraction, value) points, leaving the `held_out` names
    out to validate on; the best fraction maximises the fit (minimises it with
    `minimise`, for a loss). `seeds`: per-seed values by name, whose spread
    gives each held-out point's seed noise.

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
    seeds = seeds or {}
    validation = sorted(
        (
            HeldOut(
                n,
                float(hp),
                float(hy),
                float(best.predict(hp)),
                float(interpolate(p, y, [hp])[0]),
                extrapolation=bool(hp < p.min() or hp > p.max()),
                seed_se=seed_se(seeds.get(n)),
            )
            for n, hp, hy in points
            if n in held
        ),
        key=lambda h: h.fraction,
    )
    return Surface(best, candidates, loo, best_p, best_y, validation)
