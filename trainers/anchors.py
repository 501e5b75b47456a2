"""Anchor presets and anchor fitting for a dataset (ARCH_SPEC §4, "Anchors").

All anchors here are (w, h) in pixels of the training image, three per level, P3/8 first: the format the
detector exposes as ``anchors: Tensor[nl, na, 2]`` and :class:`gpnas.trainers.loss.YoloLoss` expects.

The quality measure is the one the loss matches with: a box fits an anchor when max(r, 1/r) < thr for both
sides (r = box / anchor), i.e. when the ratio metric min(r, 1/r) over w and h exceeds 1/thr. Best possible
recall (BPR) is the share of boxes that fit at least one anchor.
"""

from __future__ import annotations

import warnings

import numpy as np
from numpy.typing import ArrayLike, NDArray
from sklearn.cluster import KMeans
from sklearn.exceptions import ConvergenceWarning

from gpnas.errors import DataError

__all__ = ["DEFAULT_ANCHORS_V3", "DEFAULT_ANCHORS_YOLOR", "anchor_fitness", "fit_anchors"]

Anchors = tuple[tuple[tuple[int, int], ...], ...]

#: YOLOv3 / YOLOv5 defaults (640 training size): P3/8, P4/16, P5/32.
DEFAULT_ANCHORS_V3: Anchors = (
    ((10, 13), (16, 30), (33, 23)),
    ((30, 61), (62, 45), (59, 119)),
    ((116, 90), (156, 198), (373, 326)),
)
#: YOLOR / yolov7 configs (yolor-csp, yolov7, yolov7-seg).
DEFAULT_ANCHORS_YOLOR: Anchors = (
    ((12, 16), (19, 36), (40, 28)),
    ((36, 75), (76, 55), (72, 146)),
    ((142, 110), (192, 243), (459, 401)),
)

NUM_LEVELS = 3
MIN_BOX_SIDE = 2.0  # pixels; smaller boxes are annotation noise and would drag the clusters to zero
_EVOLVE_MAX_BOXES = 20_000  # evolution scores a seeded subsample; enough to rank candidates


def _best_ratio(anchors: NDArray[np.float64], wh: NDArray[np.float64]) -> NDArray[np.float64]:
    """Per box, the ratio metric of its best anchor: ``[K, 2]`` × ``[N, 2]`` -> ``[N]`` in (0, 1]."""
    r = wh[:, None, :] / anchors[None, :, :]
    return np.minimum(r, 1.0 / r).min(axis=2).max(axis=1)


def _as_wh(wh: ArrayLike, name: str) -> NDArray[np.float64]:
    arr = np.asarray(wh, dtype=np.float64)
    if arr.ndim != 2 or arr.shape[1] != 2:
        raise DataError(f"{name} must be an array of shape [N, 2] (w, h in pixels), got shape {arr.shape}")
    if not np.isfinite(arr).all():
        raise DataError(f"{name} contains NaN or inf values")
    return arr


def anchor_fitness(anchors: ArrayLike, wh: ArrayLike, thr: float = 4.0) -> tuple[float, float]:
    """(best possible recall, mean best ratio metric) of ``anchors`` on box sizes ``wh``.

    anchors: any shape ending in 2 (w, h pixels); wh: ``[N, 2]`` box widths/heights in pixels at the
    training size. BPR is the share of boxes whose best anchor fits within ``thr``; the metric is the mean
    over boxes of the best anchor's min(r, 1/r), 1 for a perfect fit.
    """
    if not thr > 1.0:
        raise ValueError(f"thr must be > 1 (a max(r, 1/r) bound), got {thr!r}")
    boxes = _as_wh(wh, "wh")
    if len(boxes) == 0:
        raise DataError("anchor_fitness needs at least one box, got wh with 0 rows")
    a = _as_wh(np.asarray(anchors, dtype=np.float64).reshape(-1, 2), "anchors")
    if (a <= 0).any() or (boxes <= 0).any():
        raise DataError("anchors and box sizes must be positive")
    best = _best_ratio(a, boxes)
    return float((best > 1.0 / thr).mean()), float(best.mean())


def _score(anchors: NDArray[np.float64], wh: NDArray[np.float64], thr: float) -> float:
    """What evolution maximises: mean ratio metric, counting boxes no anchor can reach as 0."""
    best = _best_ratio(anchors, wh)
    return float((best * (best > 1.0 / thr)).mean())


def fit_anchors(
    wh: ArrayLike,
    *,
    n: int = 9,
    img_size: int,
    seed: int = 0,
    generations: int = 300,
    thr: float = 4.0,
) -> NDArray[np.float64]:
    """Fit ``n`` anchors to box sizes: k-means in log space, then a seeded mutation search on the fitness.

    wh: ``[N, 2]`` box widths/heights in pixels at the training size ``img_size`` (not normalised). Boxes with
    a side under 2 px are ignored. Returns ``[3, n // 3, 2]`` float64 (w, h) pixels sorted by area, the
    smallest three on P3.
    Deterministic for a given ``seed``. ``generations=0`` returns the k-means anchors unchanged.
    """
    if n < NUM_LEVELS or n % NUM_LEVELS:
        raise ValueError(
            f"n must be a positive multiple of {NUM_LEVELS} (anchors per level × 3 levels), got {n}"
        )
    if generations < 0:
        raise ValueError(f"generations must be >= 0, got {generations}")
    if img_size < 1:
        raise ValueError(f"img_size must be a positive number of pixels, got {img_size}")
    if not thr > 1.0:
        raise ValueError(f"thr must be > 1 (a max(r, 1/r) bound), got {thr!r}")
    boxes = _as_wh(wh, "wh")
    if len(boxes) and boxes.max() > img_size * 1.01:
        raise DataError(
            f"box sizes go up to {boxes.max():.1f} px but the training image is {img_size} px; pass "
            f"widths and heights scaled to the training size (letterboxed), not original-image pixels"
        )
    kept = boxes[(boxes >= MIN_BOX_SIDE).all(axis=1)]
    if len(kept) < n:
        hint = " (they look normalised: multiply by img_size)" if len(boxes) and boxes.max() <= 1.0 else ""
        raise DataError(
            f"fit_anchors needs at least n={n} boxes with both sides >= {MIN_BOX_SIDE:g} px, got {len(kept)} "
            f"of {len(boxes)}{hint}; use more training images, or keep preset anchors (DEFAULT_ANCHORS_V3 / "
            f"DEFAULT_ANCHORS_YOLOR scaled by img_size / 640)"
        )

    rng = np.random.default_rng(seed)
    anchors = _kmeans_log(kept, n, seed)
    if generations:
        sample = (
            kept if len(kept) <= _EVOLVE_MAX_BOXES else kept[rng.choice(len(kept), _EVOLVE_MAX_BOXES, False)]
        )
        anchors = _evolve(anchors, sample, rng, generations=generations, thr=thr, img_size=img_size)
    anchors = anchors[np.argsort(anchors.prod(axis=1), kind="stable")]
    return anchors.reshape(NUM_LEVELS, n // NUM_LEVELS, 2)


def _kmeans_log(wh: NDArray[np.float64], n: int, seed: int) -> NDArray[np.float64]:
    """k-means on log(w), log(h): the fit criterion is a ratio, so distances are compared multiplicatively."""
    with warnings.catch_warnings():
        # Fewer distinct sizes than anchors (synthetic data) is fine: duplicate anchors are still valid.
        warnings.simplefilter("ignore", ConvergenceWarning)
        km = KMeans(n_clusters=n, n_init=10, random_state=seed).fit(np.log(wh))
    return np.exp(km.cluster_centers_)


def _evolve(
    anchors: NDArray[np.float64],
    wh: NDArray[np.float64],
    rng: np.random.Generator,
    *,
    generations: int,
    thr: float,
    img_size: int,
    mutation_prob: float = 0.9,
    sigma: float = 0.1,
) -> NDArray[np.float64]:
    """Hill-climb on :func:`_score` with random multiplicative mutations; keeps the best candidate seen."""
    best, best_score = anchors.copy(), _score(anchors, wh, thr)
    for _ in range(generations):
        factor = np.ones_like(best)
        while (factor == 1.0).all():
            mask = rng.random(best.shape) < mutation_prob
            factor = (mask * rng.random() * rng.standard_normal(best.shape) * sigma + 1.0).clip(0.3, 3.0)
        candidate = (best * factor).clip(MIN_BOX_SIDE, float(img_size))
        score = _score(candidate, wh, thr)
        if score > best_score:
            best, best_score = candidate, score
    return best
