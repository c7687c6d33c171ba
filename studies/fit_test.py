import math

import numpy as np
import pytest

from studies import fit

SWEEP = [0.0, 0.25, 0.5, 0.75, 0.9, 1.0]


def _points(fn, fractions=SWEEP, noise=0.0, seed=0):
    rng = np.random.default_rng(seed)
    return [
        (f"code{round(p * 100)}", p, float(fn(p) + noise * rng.standard_normal()))
        for p in fractions
    ]


def test_quadratic_recovers_a_known_interior_optimum():
    # NL reasoning peaking at 25% code, as the paper reports.
    points = _points(lambda p: 0.40 - 0.3 * (p - 0.25) ** 2)
    surface = fit.response_surface(points, held_out="code50")
    assert surface.fit.form == "quadratic"
    assert surface.best_fraction == pytest.approx(0.25, abs=0.002)
    assert surface.best_score == pytest.approx(0.40, abs=1e-6)
    assert surface.held_out.name == "code50"
    assert abs(surface.held_out.error) < 1e-9


def test_quadratic_optimum_survives_noise():
    points = _points(lambda p: 0.40 - 0.3 * (p - 0.25) ** 2, noise=0.002, seed=1)
    surface = fit.response_surface(points, held_out="code50")
    assert surface.best_fraction == pytest.approx(0.25, abs=0.08)
    assert abs(surface.held_out.error) < 0.01


def test_exp_form_recovers_its_parameters_and_a_boundary_optimum():
    # Code score rising steeply with the code fraction: best at 100% code.
    truth = (0.01, 0.002, 4.0)
    points = _points(
        lambda p: truth[0] + truth[1] * math.exp(truth[2] * p),
        fractions=[0.0, 0.1, 0.25, 0.4, 0.5, 0.6, 0.75, 0.9, 1.0],
    )
    surface = fit.response_surface(points, held_out="code60")
    assert surface.fit.form == "exp"
    assert surface.fit.params == pytest.approx(truth, rel=1e-3)
    assert surface.best_fraction == pytest.approx(1.0)
    assert abs(surface.held_out.error) < 1e-6
    assert surface.loo_rmse["exp"] < surface.loo_rmse["quadratic"]


def test_decreasing_score_has_its_optimum_at_zero():
    points = _points(lambda p: 0.5 - 0.1 * p - 0.05 * p * p)
    surface = fit.response_surface(points, held_out="code75")
    assert surface.best_fraction == pytest.approx(0.0)


def test_too_few_points_is_an_error_and_three_fit_exactly():
    with pytest.raises(ValueError, match="too few"):
        fit.response_surface(_points(lambda p: p, fractions=[0.0, 1.0]))
    surface = fit.response_surface(_points(lambda p: 1 - (p - 0.5) ** 2, fractions=[0, 0.5, 1]))
    assert surface.fit.rmse < 1e-9
    assert math.isnan(surface.loo_rmse["quadratic"])
    assert surface.best_fraction == pytest.approx(0.5, abs=0.002)
    assert surface.held_out is None


def test_fit_rejects_fewer_points_than_parameters():
    with pytest.raises(ValueError, match="cannot fit 3 parameters"):
        fit.fit("exp", [0.0, 1.0], [1.0, 2.0])


def test_leave_one_out_is_zero_for_exact_data():
    p = np.array(SWEEP)
    assert fit.leave_one_out_rmse("quadratic", p, 1 + 2 * p - p * p) < 1e-9


def test_a_loss_law_validates_on_held_out_mixtures():
    # Held-out code BPB falling with the code fraction, as a data mixing law.
    truth = (1.2, 1.5, -3.0)
    law = lambda p: truth[0] + truth[1] * math.exp(truth[2] * p)  # noqa: E731
    points = _points(law, fractions=[0.0, 0.25, 0.5, 0.75, 0.9, 1.0])
    points += [("r0", 0.1, law(0.1)), ("r1", 0.6, law(0.6)), ("r2", 0.35, law(0.35))]
    surface = fit.response_surface(points, held_out={"code75", "r0", "r1", "r2"}, minimise=True)
    assert surface.fit.form == "exp"
    assert surface.fit.params == pytest.approx(truth, rel=1e-3)
    assert [h.name for h in surface.validation] == ["r0", "r2", "r1", "code75"]
    assert surface.held_out_rmse < 1e-6 and surface.spearman == pytest.approx(1.0)
    assert surface.best_fraction == pytest.approx(1.0)  # the minimum of a falling loss
    # A law that ranks unseen mixtures backwards is caught by its rank correlation.
    backwards = [(n, p, law(1 - p) if n.startswith("r") else y) for n, p, y in points]
    bad = fit.response_surface(backwards, held_out={"r0", "r1", "r2"}, minimise=True)
    assert bad.spearman == pytest.approx(-1.0) and bad.held_out_rmse > 0.1
