"""Pareto analysis of a search: non-dominated sorting, hypervolume, reference point, knee point.

``values`` is always ``ndarray[N, M]``: one row per trial, one column per objective, with ``directions[m]``
saying whether column ``m`` is maximised or minimised. Internally everything becomes minimisation by negating
the maximised columns (and their reference coordinates). A row holding any NaN (a failed, pruned or infeasible
trial) is never on a front and never adds hypervolume.

Hypervolume: exact, implemented here. In Optuna 5.0 the hypervolume routine lives only in the private
``optuna._hypervolume`` package (the public API offers just ``visualization.plot_hypervolume_history``, a
plot), and private modules change without notice, so we do not depend on it. The algorithm is hypervolume by
slicing objectives (HSO): M = 1 is a length, M = 2 an O(N log N) staircase sweep, and M ≥ 3 sorts by the last
objective and sums slab thickness × the (M−1)-D hypervolume of the points below the slab: O(N² log N) for
M = 3, fine for N up to a few hundred at M = 4. Dominated points are removed first.

The reference point is part of the figure: hypervolumes are only comparable between searches that used the
same reference, so :func:`reference_point` documents how it is chosen and callers log it beside the figure.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from gpnas.objectives.definitions import OBJECTIVES, Direction

__all__ = [
    "Direction",
    "hypervolume",
    "hypervolume_contributions",
    "hypervolume_history",
    "knee_point",
    "non_dominated_sort",
    "pareto_mask",
    "reference_point",
]

_MARGIN = 0.1


def _as_minimisation(values: np.ndarray | Sequence[Sequence[float]], directions: Sequence[str]) -> np.ndarray:
    """``values`` as float ``ndarray[N, M]``, maximised columns negated; validates shape and directions."""
    arr = np.asarray(values, dtype=np.float64)
    if arr.ndim == 1 and arr.size == 0:
        arr = arr.reshape(0, len(directions))
    if arr.ndim != 2:
        raise ValueError(f"values must be a 2-D array [N trials, M objectives]; got shape {arr.shape}.")
    if arr.shape[1] != len(directions):
        raise ValueError(
            f"values has {arr.shape[1]} objective column(s) but directions has {len(directions)} entries "
            f"({list(directions)}): give one direction per column."
        )
    return arr * _signs(directions)


def _signs(directions: Sequence[str]) -> np.ndarray:
    """+1 for minimised objectives, −1 for maximised ones."""
    signs = []
    for i, direction in enumerate(directions):
        if direction not in ("maximize", "minimize"):
            raise ValueError(f"directions[{i}]={direction!r} is not allowed: use 'maximize' or 'minimize'.")
        signs.append(-1.0 if direction == "maximize" else 1.0)
    return np.asarray(signs, dtype=np.float64)


def _dominance_matrix(points: np.ndarray) -> np.ndarray:
    """``D[i, j]`` is True when minimisation point i dominates point j (≤ everywhere, < somewhere)."""
    n = points.shape[0]
    all_le = np.ones((n, n), dtype=bool)
    any_lt = np.zeros((n, n), dtype=bool)
    for m in range(points.shape[1]):  # one objective at a time keeps memory at O(N²), not O(N² M)
        col = points[:, m]
        all_le &= col[:, None] <= col[None, :]
        any_lt |= col[:, None] < col[None, :]
    return all_le & any_lt


def non_dominated_sort(values: np.ndarray, directions: Sequence[Direction]) -> np.ndarray:
    """Pareto rank of each row: ``ndarray[N] int``, 0 for the Pareto front, 1 for the front behind it, ...

    Rows with any NaN get the worst finite rank + 1 (rank 1 when no row is finite), so they are never on the
    front. Duplicate rows share a rank. O(M N²) time and O(N²) memory.
    """
    points = _as_minimisation(values, directions)
    ranks = np.zeros(points.shape[0], dtype=np.int64)
    finite = ~np.isnan(points).any(axis=1)
    idx = np.flatnonzero(finite)
    dominated_by = _dominance_matrix(points[idx])
    remaining = np.ones(idx.size, dtype=bool)
    counts = dominated_by.sum(axis=0)
    rank = 0
    while remaining.any():
        front = remaining & (counts == 0)
        ranks[idx[front]] = rank
        remaining &= ~front
        counts = counts - dominated_by[front].sum(axis=0)
        rank += 1
    ranks[~finite] = max(rank, 1)
    return ranks


def pareto_mask(values: np.ndarray, directions: Sequence[Direction]) -> np.ndarray:
    """``ndarray[N] bool``: True for rows on the Pareto front (never a row with NaN)."""
    points = _as_minimisation(values, directions)
    finite = ~np.isnan(points).any(axis=1)
    return (non_dominated_sort(values, directions) == 0) & finite


def _hv_2d(points: np.ndarray, ref: np.ndarray) -> float:
    """Area dominated by 2-D minimisation points (all strictly below ``ref``): a staircase sweep over x."""
    order = np.argsort(points[:, 0], kind="stable")
    xs = points[order, 0]
    best_y = np.minimum.accumulate(points[order, 1])
    widths = np.diff(np.append(xs, ref[0]))
    return float(np.sum(widths * (ref[1] - best_y)))


def _hv_recursive(points: np.ndarray, ref: np.ndarray) -> float:
    """Exact hypervolume by slicing the last objective (HSO); points are strictly below ``ref``."""
    n_obj = points.shape[1]
    if points.shape[0] == 0:
        return 0.0
    if n_obj == 1:
        return float(ref[0] - points[:, 0].min())
    if n_obj == 2:
        return _hv_2d(points, ref)
    order = np.argsort(points[:, -1], kind="stable")
    sorted_points = points[order]
    tops = np.append(sorted_points[1:, -1], ref[-1])
    total = 0.0
    for i in range(sorted_points.shape[0]):
        thickness = tops[i] - sorted_points[i, -1]
        if thickness <= 0.0:
            continue  # the next point has the same last coordinate; its slab is counted with it
        below = sorted_points[: i + 1, :-1]
        if below.shape[1] >= 3:  # the 2-D sweep copes with dominated points; deeper slicing is not
            below = below[~_dominance_matrix(below).any(axis=0)]
        total += thickness * _hv_recursive(below, ref[:-1])
    return total


def hypervolume(values: np.ndarray, directions: Sequence[Direction], reference: Sequence[float]) -> float:
    """Exact hypervolume dominated by ``values`` and bounded by ``reference`` (see the module docstring).

    Only points strictly better than the reference in every objective contribute; NaN rows are ignored.
    ``reference`` has one finite coordinate per objective, in the objectives' own units and directions.
    """
    points = _as_minimisation(values, directions)
    ref = np.asarray(reference, dtype=np.float64)
    if ref.shape != (len(directions),) or not np.isfinite(ref).all():
        raise ValueError(
            f"reference={list(np.atleast_1d(ref))} must hold {len(directions)} finite number(s), one per "
            f"objective {list(directions)}: see reference_point()."
        )
    return _hv_minimisation(points, ref * _signs(directions))


def hypervolume_contributions(values: np.ndarray, directions: Sequence[Direction],
                              reference: Sequence[float]) -> np.ndarray:
    """``ndarray[N]``: the hypervolume each row adds to the others (HV of all − HV without it); 0 for a
    dominated row, a duplicate, a NaN row or one not better than ``reference``."""
    points = np.asarray(values, dtype=np.float64)
    total = hypervolume(points, directions, reference)
    return np.array([total - hypervolume(np.delete(points, i, axis=0), directions, reference)
                     for i in range(points.shape[0])])


def _hv_minimisation(points: np.ndarray, ref: np.ndarray) -> float:
    """Hypervolume of minimisation ``points`` (NaN rows allowed) bounded by minimisation ``ref``."""
    points = points[~np.isnan(points).any(axis=1)]
    points = points[(points < ref).all(axis=1)]
    if points.shape[0] == 0:
        return 0.0
    points = np.unique(points, axis=0)
    points = points[~_dominance_matrix(points).any(axis=0)]
    return _hv_recursive(points, ref)


def hypervolume_history(
    values_in_trial_order: np.ndarray, directions: Sequence[Direction], reference: Sequence[float]
) -> list[float]:
    """Hypervolume after each trial, in trial order: one entry per row, non-decreasing.

    A NaN row (failed / pruned / infeasible trial) adds nothing, so its entry repeats the previous value.
    """
    points = _as_minimisation(values_in_trial_order, directions)
    hypervolume(points[:0] * _signs(directions), directions, reference)  # validates the reference
    ref = np.asarray(reference, dtype=np.float64) * _signs(directions)
    history: list[float] = []
    front = np.empty((0, points.shape[1]))
    current = 0.0
    for point in points:
        improves = not np.isnan(point).any() and bool((point < ref).all())
        if improves and front.shape[0]:
            improves = not bool(np.all(front <= point, axis=1).any())  # weakly dominated: adds no volume
        if improves:
            front = np.vstack([front[~np.all(point <= front, axis=1)], point])
            current = _hv_minimisation(front, ref)
        history.append(current)
    return history


def knee_point(values: np.ndarray, directions: Sequence[Direction]) -> int:
    """Row index (into ``values``) of the knee of the Pareto front.

    Each objective is normalised to [0, 1] over the front points with the best value at 0 (an objective that
    is constant on the front is 0 everywhere); the knee is the front point closest (Euclidean) to the ideal
    point (0, …, 0). A single front point is its own knee; ties go to the lowest row index. Raises ValueError
    when no row is complete (every row has a NaN, or there are none).
    """
    points = _as_minimisation(values, directions)
    front_idx = np.flatnonzero(pareto_mask(values, directions))
    if front_idx.size == 0:
        raise ValueError(
            f"knee_point needs at least one row without NaN; got {points.shape[0]} row(s), none complete."
        )
    front = points[front_idx]
    lo, hi = front.min(axis=0), front.max(axis=0)
    span = np.where(hi > lo, hi - lo, 1.0)
    normalised = (front - lo) / span
    distances = np.linalg.norm(normalised, axis=1)
    return int(front_idx[int(np.argmin(distances))])


def _reference_coordinate(
    column: np.ndarray, name: str, direction: str, constraints: Mapping[str, float | None]
) -> float:
    """One coordinate of :func:`reference_point`."""
    known = OBJECTIVES.get(name)
    bound_key = known.constraint if known else None
    worst_side = "max" if direction == "minimize" else "min"  # a bound on the worse side is a valid reference
    if (bound_key is not None and constraints.get(bound_key) is not None
            and bound_key.startswith(f"{worst_side}_")):
        return float(constraints[bound_key])  # type: ignore[arg-type]
    if known is not None and known.natural_bound is not None:
        return known.natural_bound
    finite = column[np.isfinite(column)]
    if finite.size == 0:
        hint = f" or pass constraints['{bound_key}']" if bound_key else ""
        raise ValueError(
            f"Cannot place the reference for objective {name!r}: it has no finite value{hint}."
        )
    lo, hi = float(finite.min()), float(finite.max())
    if direction == "maximize":
        margin = _MARGIN * (hi - lo) or _MARGIN * abs(lo) or _MARGIN
        return lo - margin
    margin = _MARGIN * abs(hi) or _MARGIN * (hi - lo) or _MARGIN
    return hi + margin


def reference_point(
    values: np.ndarray,
    directions: Sequence[Direction],
    names: Sequence[str],
    constraints: Mapping[str, float | None] | None = None,
) -> list[float]:
    """The documented hypervolume reference point, one coordinate per objective.

    * maximised ``"ap"``: 0.0 (AP lies in [0, 1]); any other maximised objective: min observed − 10 % of the
      observed range (10 % of |min|, or 0.1, when the range is 0).
    * a minimised objective with a ``max_<name>`` constraint (``"gflops"``, ``"latency_ms"``, any registered one)
      or a maximised one with a ``min_<name>`` constraint: the search's bound (``constraints["max_gflops"]``)
      when given (not None); otherwise, and for any other minimised objective, max observed × 1.1
      (max + 0.1 · |max|, or + 0.1 when max is 0).

    Hypervolumes are only comparable between searches that used the same reference: log it with the figure.
    NaN rows are ignored; an objective with no finite value and no bound raises ValueError.
    """
    points = np.asarray(values, dtype=np.float64)
    _as_minimisation(points, directions)
    if len(names) != len(directions):
        raise ValueError(f"names {list(names)} and directions {list(directions)} must have the same length.")
    for name, direction in zip(names, directions, strict=True):
        expected = OBJECTIVES[name].direction if name in OBJECTIVES else None
        if expected is not None and expected != direction:
            raise ValueError(f"Objective {name!r} is always {expected!r}; got direction {direction!r}.")
    points = points.reshape(-1, len(directions))
    complete = points[~np.isnan(points).any(axis=1)]
    bounds = dict(constraints or {})
    return [
        _reference_coordinate(complete[:, m], name, direction, bounds)
        for m, (name, direction) in enumerate(zip(names, directions, strict=True))
    ]
