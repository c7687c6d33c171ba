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
    assert surface.held_out_rmse < 1e-6
    assert surface.best_fraction == pytest.approx(1.0)  # the minimum of a falling loss


def _seeded(points, spread):
    """Per-seed values whose mean is each point's value: value + spread * (-1, 0, 1)."""
    return {n: [y - spread, y, y + spread] for n, _, y in points}


# Interior held-out fractions, between fitted ones.
FITTED = [0.0, 0.25, 0.5, 0.75, 1.0]
HELD = [0.1, 0.4, 0.6, 0.7, 0.9]


def _sweep(fn):
    points = _points(fn, fractions=FITTED)
    held = [(f"r{i}", p, float(fn(p))) for i, p in enumerate(HELD)]
    return points + held, [n for n, _, _ in held]


def test_a_true_quadratic_beats_interpolation_within_the_seed_noise():
    points, held = _sweep(lambda p: 1.0 + 2.0 * (p - 0.3) ** 2)
    surface = fit.response_surface(
        points, held_out=held, minimise=True, seeds=_seeded(points, 0.01)
    )
    assert surface.fit.form == "quadratic"
    assert surface.held_out_rmse < 1e-9
    # Straight lines between the fitted arms miss the curvature between them.
    assert surface.interpolation_rmse > 0.01
    assert surface.seed_noise == pytest.approx(0.01 / math.sqrt(3))
    assert surface.beats_interpolation and surface.within_seed_noise
    assert surface.verdict() == "the law beats interpolation; its error is within the seed noise"
    assert surface.spearman == pytest.approx(1.0) and surface.spearman_note == ""


def test_a_law_that_loses_to_piecewise_data_says_so():
    # Falling, then flat from 50% code: a kink no three-parameter form follows,
    # while straight lines between the fitted arms are exact.
    points, held = _sweep(lambda p: 1.0 - 0.5 * min(p, 0.5))
    surface = fit.response_surface(
        points, held_out=held, minimise=True, seeds=_seeded(points, 1e-4)
    )
    assert surface.interpolation_rmse < 1e-12
    assert surface.held_out_rmse > 0.005
    assert not surface.beats_interpolation and not surface.within_seed_noise
    assert surface.verdict() == (
        "the law does not beat interpolation; its error exceeds the seed noise"
    )
    # Without per-seed values there is no seed noise to compare with.
    bare = fit.response_surface(points, held_out=held, minimise=True)
    assert math.isnan(bare.seed_noise) and bare.verdict() == "the law does not beat interpolation"


def test_a_law_that_ranks_held_out_mixtures_backwards_is_caught():
    law = lambda p: 1.2 + 1.5 * math.exp(-3.0 * p)  # noqa: E731
    points, held = _sweep(law)
    # The held-out arms measured as if their code fractions were mirrored.
    backwards = [(n, p, law(1 - p) if n in held else y) for n, p, y in points]
    bad = fit.response_surface(backwards, held_out=held, minimise=True)
    assert len(bad.validation) == fit.MIN_RANK_POINTS
    assert bad.spearman == pytest.approx(-1.0) and bad.held_out_rmse > 0.1


def test_rank_correlation_needs_enough_held_out_points():
    points, held = _sweep(lambda p: 1.0 + 2.0 * (p - 0.3) ** 2)
    few = fit.response_surface(points, held_out=held[:4], minimise=True)
    assert math.isnan(few.spearman)
    assert few.spearman_note == "not computed: 4 held-out points (needs 5)"
    enough = fit.response_surface(points, held_out=held[:5], minimise=True)
    assert enough.spearman == pytest.approx(1.0)
    flat = fit.response_surface(_sweep(lambda p: 2.0)[0], held_out=held, minimise=True)
    assert flat.spearman_note == "not computed: the held-out values are all equal"


def test_the_largest_fraction_is_held_out_as_an_extrapolation():
    line = lambda p: 2.0 - p  # noqa: E731
    points = _points(line)
    held = fit.with_extrapolation(points, ["code75"])
    assert held == ["code75", "code100"]
    surface = fit.response_surface(points, held_out=held, minimise=True)
    assert [(h.name, h.extrapolation) for h in surface.validation] == [
        ("code75", False),
        ("code100", True),
    ]
    # The baseline extends the last fitted segment (50% to 90%) to 100%.
    assert surface.validation[1].interpolated == pytest.approx(1.0)
    assert surface.held_out_rmse < 1e-9
    # A held-out point already beyond the fitted range is the extrapolation.
    assert fit.with_extrapolation(points, ["code0", "code75"]) == ["code0", "code75"]
    # Too few fractions left to fit: nothing is added.
    short = _points(line, fractions=[0.0, 0.5, 0.75, 0.9, 1.0])
    assert fit.with_extrapolation(short, ["code50"]) == ["code50"]


def test_interpolation_is_piecewise_linear_and_extends_its_end_segments():
    p, y = [0.0, 0.5, 0.5, 1.0], [1.0, 0.4, 0.6, 1.5]  # two arms at 50%: their mean
    got = fit.interpolate(p, y, [-0.5, 0.25, 0.5, 0.75, 1.5])
    assert got == pytest.approx([1.5, 0.75, 0.5, 1.0, 2.5])
    assert fit.interpolate([0.3], [2.0], [0.0, 1.0]) == pytest.approx([2.0, 2.0])
