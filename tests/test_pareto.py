"""Tests for gpnas.results.pareto: ranks, masks, exact hypervolume, history, reference point, knee point."""

from __future__ import annotations

import itertools
import math

import numpy as np
import pytest

from gpnas.objectives.definitions import OBJECTIVES
from gpnas.results.pareto import (
    hypervolume,
    hypervolume_history,
    knee_point,
    non_dominated_sort,
    pareto_mask,
    reference_point,
)

MIN2 = ["minimize", "minimize"]
MAX2 = ["maximize", "maximize"]
MIN3 = ["minimize", "minimize", "minimize"]
POINTS_2D = np.array([[1, 5], [2, 3], [4, 1], [3, 4], [5, 5], [2, 6], [6, 6]], dtype=float)


def _grid_volume(points: np.ndarray, reference: np.ndarray) -> int:
    """Brute-force minimisation hypervolume of integer points: the count of dominated unit cells."""
    axes = [np.arange(int(r)) for r in reference]
    cells = np.array(list(itertools.product(*axes)), dtype=float)
    covered = (points[None, :, :] <= cells[:, None, :]).all(axis=2).any(axis=1)
    return int(covered.sum())


def test_sort_2d_known_ranks() -> None:
    assert non_dominated_sort(POINTS_2D, MIN2).tolist() == [0, 0, 0, 1, 2, 1, 3]


def test_sort_directions_flip_ranks() -> None:
    assert non_dominated_sort(POINTS_2D, MAX2).tolist() == [2, 3, 2, 2, 1, 1, 0]
    ap_gflops = np.array([[0.5, 10.0], [0.4, 5.0], [0.3, 8.0], [0.6, 20.0]])
    assert non_dominated_sort(ap_gflops, ["maximize", "minimize"]).tolist() == [0, 0, 1, 0]


def test_sort_3d_known_ranks() -> None:
    points = np.array([[1, 2, 3], [2, 1, 3], [3, 3, 1], [2, 2, 3], [3, 3, 3]], dtype=float)
    assert non_dominated_sort(points, MIN3).tolist() == [0, 0, 0, 1, 2]


def test_duplicates_share_a_rank() -> None:
    points = np.array([[1.0, 1.0], [1.0, 1.0], [2.0, 2.0]])
    assert non_dominated_sort(points, MIN2).tolist() == [0, 0, 1]


def test_nan_rows_get_worst_rank_plus_one_and_are_never_on_front() -> None:
    points = np.array([[1.0, 1.0], [np.nan, 0.0], [2.0, 2.0]])
    assert non_dominated_sort(points, MIN2).tolist() == [0, 2, 1]
    assert pareto_mask(points, MIN2).tolist() == [True, False, False]
    all_nan = np.full((2, 2), np.nan)
    assert non_dominated_sort(all_nan, MIN2).tolist() == [1, 1]
    assert not pareto_mask(all_nan, MIN2).any()


def test_empty_input() -> None:
    assert non_dominated_sort(np.empty((0, 2)), MIN2).shape == (0,)
    assert hypervolume(np.empty((0, 2)), MIN2, [1.0, 1.0]) == 0.0


def test_bad_inputs_name_the_problem() -> None:
    with pytest.raises(ValueError, match="directions\\[1\\]='down'"):
        non_dominated_sort(POINTS_2D, ["minimize", "down"])
    with pytest.raises(ValueError, match="2 objective column"):
        non_dominated_sort(POINTS_2D, MIN3)
    with pytest.raises(ValueError, match="finite"):
        hypervolume(POINTS_2D, MIN2, [1.0, np.inf])
    with pytest.raises(ValueError, match="one per"):
        hypervolume(POINTS_2D, MIN2, [1.0])


def test_hypervolume_single_point_is_box_volume() -> None:
    assert hypervolume(np.array([[1.0, 2.0, 3.0]]), MIN3, [4.0, 4.0, 4.0]) == pytest.approx(6.0)
    assert hypervolume(np.array([[3.0]]), ["maximize"], [1.0]) == pytest.approx(2.0)


def test_hypervolume_2d_staircase_by_hand() -> None:
    # x 1..2 height 1, x 2..3 height 2, x 3..4 height 3 -> 6; the dominated (3, 3) adds nothing
    points = np.array([[1.0, 3.0], [2.0, 2.0], [3.0, 1.0], [3.0, 3.0]])
    assert hypervolume(points, MIN2, [4.0, 4.0]) == pytest.approx(6.0)


def test_hypervolume_mixed_directions() -> None:
    # (ap, gflops): boxes 0.5 x 10 and 0.4 x 15 overlap in 0.4 x 10 -> 5 + 6 - 4
    points = np.array([[0.5, 10.0], [0.4, 5.0]])
    assert hypervolume(points, ["maximize", "minimize"], [0.0, 20.0]) == pytest.approx(7.0)


def test_hypervolume_3d_two_boxes_known_union() -> None:
    points = np.array([[0.0, 0.0, 2.0], [2.0, 2.0, 0.0]])
    assert hypervolume(points, MIN3, [3.0, 3.0, 3.0]) == pytest.approx(9.0 + 3.0 - 1.0)


def test_points_not_dominating_reference_contribute_nothing() -> None:
    assert hypervolume(np.array([[5.0, 1.0], [4.0, 1.0]]), MIN2, [4.0, 4.0]) == 0.0
    mixed = np.array([[5.0, 1.0], [1.0, 3.0], [np.nan, 0.0]])
    assert hypervolume(mixed, MIN2, [4.0, 4.0]) == pytest.approx(3.0)


@pytest.mark.parametrize("n_obj", [2, 3, 4])
def test_hypervolume_matches_brute_force_grid(n_obj: int) -> None:
    rng = np.random.default_rng(n_obj)
    side = 8 if n_obj < 4 else 5
    for _ in range(5):
        points = rng.integers(0, side, size=(25, n_obj)).astype(float)
        reference = np.full(n_obj, float(side))
        expected = _grid_volume(points, reference)
        assert hypervolume(points, ["minimize"] * n_obj, reference) == pytest.approx(expected)


def test_hypervolume_3d_random_matches_monte_carlo() -> None:
    rng = np.random.default_rng(0)
    points = rng.random((40, 3))
    exact = hypervolume(points, MIN3, [1.0, 1.0, 1.0])
    samples = rng.random((200_000, 3))
    covered = np.zeros(len(samples), dtype=bool)
    for point in points:
        covered |= (samples >= point).all(axis=1)
    assert exact == pytest.approx(covered.mean(), abs=0.01)


def test_history_is_non_decreasing_and_ends_at_total() -> None:
    rng = np.random.default_rng(1)
    values = rng.random((60, 3))
    values[[5, 17, 40], 1] = np.nan
    directions = ["maximize", "minimize", "minimize"]
    reference = [0.0, 1.0, 1.0]
    history = hypervolume_history(values, directions, reference)
    assert len(history) == len(values)
    assert all(b >= a for a, b in itertools.pairwise(history))
    assert history[17] == history[16]
    assert history[-1] == pytest.approx(hypervolume(values, directions, reference))
    assert history[0] == pytest.approx(hypervolume(values[:1], directions, reference))


def test_knee_on_symmetric_convex_front_is_middle() -> None:
    front = np.array([[0.0, 1.0], [0.1, 0.4], [0.25, 0.25], [0.4, 0.1], [1.0, 0.0], [0.5, 0.5]])
    assert knee_point(front, MIN2) == 2
    assert knee_point(-front, MAX2) == 2


def test_knee_single_point_and_empty() -> None:
    values = np.array([[1.0, 1.0], [2.0, 2.0], [np.nan, 0.0]])
    assert knee_point(values, MIN2) == 0
    with pytest.raises(ValueError, match="knee_point"):
        knee_point(np.empty((0, 2)), MIN2)
    with pytest.raises(ValueError, match="knee_point"):
        knee_point(np.full((3, 2), np.nan), MIN2)


def test_reference_point_rules() -> None:
    names = ["ap", "gflops", "latency_ms"]
    directions = [OBJECTIVES[n].direction for n in names]
    values = np.array([[0.3, 10.0, 4.0], [0.5, 20.0, 8.0], [np.nan, 100.0, 100.0]])
    assert reference_point(values, directions, names) == pytest.approx([0.0, 22.0, 8.8])
    bounded = reference_point(values, directions, names, {"max_gflops": 30.0, "max_latency_ms": None})
    assert bounded == pytest.approx([0.0, 30.0, 8.8])
    other = reference_point(np.array([[2.0, 1.0], [4.0, 1.0]]), ["maximize", "minimize"], ["score", "cost"])
    assert other == pytest.approx([1.8, 1.1])
    ref = reference_point(values, directions, names)
    assert hypervolume(values, directions, ref) > 0 and math.isfinite(hypervolume(values, directions, ref))


def test_reference_point_errors() -> None:
    with pytest.raises(ValueError, match="'ap' is always 'maximize'"):
        reference_point(np.ones((2, 1)), ["minimize"], ["ap"])
    with pytest.raises(ValueError, match="max_gflops"):
        reference_point(np.full((2, 1), np.nan), ["minimize"], ["gflops"])
    with pytest.raises(ValueError, match="same length"):
        reference_point(np.ones((2, 1)), ["minimize"], ["gflops", "ap"])


def test_sort_scales_to_thousands() -> None:
    values = np.random.default_rng(2).random((2000, 3))
    ranks = non_dominated_sort(values, MIN3)
    front = values[ranks == 0]
    le = (values[:, None, :] <= front[None, :, :]).all(axis=2)
    lt = (values[:, None, :] < front[None, :, :]).any(axis=2)
    assert not (le & lt).any(), "a front point is dominated"
    assert (ranks[ranks > 0] > 0).all() and ranks.max() > 5
    assert pareto_mask(values, MIN3).sum() == (ranks == 0).sum() > 0
    assert hypervolume(values[:200], MIN3, [1.0, 1.0, 1.0]) > 0
