"""Change-point scores of TCPDBench (van den Burg & Williams 2020), plain Python.

A change point is the index of the first value of a new segment of a series
``y_0 .. y_{n-1}``. Every segmentation is scored against the change points of
``K`` annotators, ``T_1 .. T_K``; the start ``0`` counts as a change point of
every annotator and of the prediction ``X`` (so an empty prediction is the
"zero" detector, ``X = {0}``).

F1 with margin ``M`` (5 in TCPDBench):

* ``TP(T, X)``: the annotated points ``tau`` in ``T`` matched by a prediction
  ``x`` with ``|tau - x| <= M``, each ``x`` matching at most one ``tau``. The
  match is greedy: ``tau`` in increasing order takes the nearest unused ``x``
  (the earlier one on a tie);
* precision ``P = |TP(T*, X)| / |X|`` against the union ``T* = T_1 u .. u T_K``
  (a prediction is right when some annotator marked a point near it);
* recall ``R = (1/K) sum_k |TP(T_k, X)| / |T_k|`` (the mean over annotators);
* ``F = P R / (alpha R + (1 - alpha) P)``, the harmonic mean ``2PR / (P + R)``
  at ``alpha = 1/2``. Since ``0`` is in every set, ``P`` and ``R`` are at
  least ``1/|X|`` and ``1/max|T_k|``, so ``F > 0``.

Cover (Arbelaez et al. 2011, "Contour detection and hierarchical image
segmentation", as used by TCPDBench): with ``G`` an annotator's segmentation
and ``S`` the predicted one (sets of half-open index intervals partitioning
``[0, n)``), ``J(A, B) = |A n B| / |A u B|`` (Jaccard index) and

    C(S, G) = (1/n) sum_{A in G} |A| max_{B in S} J(A, B),

averaged over the annotators. Both scores lie in ``[0, 1]`` and equal 1 for a
prediction equal to every annotator's change points.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from itertools import pairwise
from typing import NamedTuple

#: Margin of TCPDBench's F1, in indices.
MARGIN = 5
#: Weight of recall in ``F = P R / (alpha R + (1 - alpha) P)``; 1/2 is F1.
ALPHA = 0.5


class F1Score(NamedTuple):
    """F-measure with its precision and recall (all in ``[0, 1]``)."""

    f1: float
    precision: float
    recall: float


def _points(cps: Iterable[int]) -> set[int]:
    """The change points as a set of non-negative ints, with the start ``0`` added."""
    out = {0}
    for c in cps:
        i = int(c)
        if i != c or i < 0:
            raise ValueError(f"change points are non-negative integer indices, got {c!r}")
        out.add(i)
    return out


def true_positives(
    truth: Iterable[int], predicted: Iterable[int], margin: int = MARGIN
) -> set[int]:
    """``TP(T, X)``: points of ``truth`` matched one-to-one by a prediction within ``margin``.

    Greedy, ``tau`` in increasing order, each taking the nearest unused
    prediction (the earlier one on a tie). Neither set gets ``0`` added here.
    """
    free = sorted(set(predicted))
    matched: set[int] = set()
    for tau in sorted(set(truth)):
        best: int | None = None
        for x in free:
            if abs(tau - x) <= margin and (best is None or abs(tau - x) < abs(tau - best)):
                best = x
        if best is not None:
            matched.add(tau)
            free.remove(best)
    return matched


def f_measure(
    annotations: Mapping[str, Sequence[int]],
    predictions: Iterable[int],
    margin: int = MARGIN,
    alpha: float = ALPHA,
) -> F1Score:
    """F-measure, precision and recall of ``predictions`` against every annotator (module doc)."""
    if not annotations:
        raise ValueError("need at least one annotator")
    truths = [_points(cps) for cps in annotations.values()]
    x = _points(predictions)
    union = set().union(*truths)
    precision = len(true_positives(union, x, margin)) / len(x)
    recall = sum(len(true_positives(t, x, margin)) / len(t) for t in truths) / len(truths)
    denom = alpha * recall + (1.0 - alpha) * precision
    f1 = precision * recall / denom if denom > 0.0 else 0.0
    return F1Score(f1, precision, recall)


def segments(cps: Iterable[int], n: int) -> list[tuple[int, int]]:
    """Half-open intervals ``[a, b)`` partitioning ``[0, n)`` at the change points ``cps``."""
    if n < 1:
        raise ValueError("a series has at least one value")
    pts = _points(cps)
    if max(pts) >= n:
        raise ValueError(f"change point {max(pts)} outside a series of {n} values")
    bounds = [*sorted(pts), n]
    return list(pairwise(bounds))


def _jaccard(a: tuple[int, int], b: tuple[int, int]) -> float:
    inter = max(0, min(a[1], b[1]) - max(a[0], b[0]))
    return inter / ((a[1] - a[0]) + (b[1] - b[0]) - inter)


def cover_single(truth: Sequence[tuple[int, int]], predicted: Sequence[tuple[int, int]]) -> float:
    """Cover ``C(S, G) = (1/n) sum_{A in G} |A| max_{B in S} J(A, B)`` of ``G`` by ``S``.

    ``truth`` (``G``) and ``predicted`` (``S``) are partitions of ``[0, n)`` into intervals.
    """
    n = sum(b - a for a, b in truth)
    if n != sum(b - a for a, b in predicted):
        raise ValueError("segmentations of different lengths")
    total = 0.0
    for a in truth:
        total += (a[1] - a[0]) * max(_jaccard(a, b) for b in predicted)
    return total / n


def covering(annotations: Mapping[str, Sequence[int]], predictions: Iterable[int], n: int) -> float:
    """Cover of the predicted segmentation, averaged over the annotators' (module doc)."""
    if not annotations:
        raise ValueError("need at least one annotator")
    pred = segments(predictions, n)
    covers = [cover_single(segments(cps, n), pred) for cps in annotations.values()]
    return sum(covers) / len(covers)
