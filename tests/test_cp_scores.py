"""TCPDBench's F1 and cover (bench.cp_scores): hand-computed cases, closed forms, properties."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bench import cp_scores as S

TOL = 1e-12


def _random_cps(rng: np.random.Generator, n: int, k: int) -> list[int]:
    return sorted({int(c) for c in rng.integers(1, n, size=k)})


def _random_annotations(rng: np.random.Generator, n: int) -> dict[str, list[int]]:
    return {str(a): _random_cps(rng, n, int(rng.integers(0, 6))) for a in range(5)}


# ----------------------------------------------------------------------------
# True positives
# ----------------------------------------------------------------------------
def test_margin_is_inclusive() -> None:
    assert S.true_positives({20}, {25}) == {20}
    assert S.true_positives({20}, {15}) == {20}
    assert S.true_positives({20}, {26}) == set()
    assert S.true_positives({20}, {26}, margin=6) == {20}


def test_a_prediction_matches_one_annotation_only() -> None:
    # 11 is within 5 of both 10 and 12: it can count for one of them.
    assert S.true_positives({10, 12}, {11}) == {10}
    assert S.true_positives({10, 12}, {11, 13}) == {10, 12}


def test_greedy_nearest_match_in_increasing_order() -> None:
    # 10 takes its nearest prediction 12 (distance 2, before 5 at distance 5),
    # so 15 finds nothing: greedy, not a maximum matching (10-5, 15-12).
    assert S.true_positives({10, 15}, {5, 12}) == {10}
    # A tie goes to the earlier prediction: 10 takes 8, 12 is left for 13.
    assert S.true_positives({10, 13}, {8, 12}) == {10, 13}
    assert S.true_positives({10, 7}, {8, 12}) == {7, 10}


# ----------------------------------------------------------------------------
# F1
# ----------------------------------------------------------------------------
def test_f1_hand_computed() -> None:
    ann = {"a": [10], "b": [12, 30]}
    # X = {0, 11, 40}; T* = {0, 10, 12, 30}: 0-0 and 10-11 match, 12 finds 11
    # taken, 30 and 40 are 10 apart -> P = 2/3.
    # T_a = {0, 10}: 2/2; T_b = {0, 12, 30}: 0-0, 12-11 -> 2/3; R = 5/6.
    # F1 = 2 (2/3)(5/6) / (2/3 + 5/6) = 20/27.
    got = S.f_measure(ann, [11, 40])
    assert got.precision == pytest.approx(2 / 3, abs=TOL)
    assert got.recall == pytest.approx(5 / 6, abs=TOL)
    assert got.f1 == pytest.approx(20 / 27, abs=TOL)


def test_f1_one_prediction_between_two_annotations() -> None:
    # X = {0, 11}, T = {0, 10, 12}: P = 2/2, R = 2/3, F1 = 0.8.
    got = S.f_measure({"a": [10, 12]}, [11])
    assert got == pytest.approx((0.8, 1.0, 2 / 3), abs=TOL)


def test_start_point_and_duplicates_are_counted_once() -> None:
    ann = {"a": [0, 30], "b": [30, 30]}
    assert S.f_measure(ann, [0, 30, 30]) == pytest.approx((1.0, 1.0, 1.0), abs=TOL)
    assert S.f_measure(ann, [30]) == S.f_measure(ann, [0, 30])


def test_f_measure_weights() -> None:
    ann = {"a": [10], "b": [12, 30]}
    p, r = 2 / 3, 5 / 6
    for alpha in (0.2, 0.5, 0.9):
        got = S.f_measure(ann, [11, 40], alpha=alpha)
        assert got.f1 == pytest.approx(p * r / (alpha * r + (1 - alpha) * p), abs=TOL)


def test_perfect_prediction_scores_one() -> None:
    rng = np.random.default_rng(3)
    for _ in range(50):
        n = int(rng.integers(20, 300))
        cps = _random_cps(rng, n, int(rng.integers(0, 8)))
        ann = {str(a): list(cps) for a in range(5)}
        assert S.f_measure(ann, cps) == pytest.approx((1.0, 1.0, 1.0), abs=TOL)
        assert S.covering(ann, cps, n) == pytest.approx(1.0, abs=TOL)


def test_union_of_annotations_has_full_precision_and_recall() -> None:
    rng = np.random.default_rng(4)
    for _ in range(50):
        ann = _random_annotations(rng, 200)
        union = sorted({c for cps in ann.values() for c in cps})
        assert S.f_measure(ann, union) == pytest.approx((1.0, 1.0, 1.0), abs=TOL)


def test_zero_detector_f1_closed_form() -> None:
    # X = {0}: 0 matches 0, nothing else can match -> P = 1,
    # R = mean_k 1 / |T_k u {0}|, F1 = 2R / (1 + R).
    rng = np.random.default_rng(5)
    for _ in range(100):
        ann = _random_annotations(rng, 100)
        r = float(np.mean([1.0 / len({0, *cps}) for cps in ann.values()]))
        got = S.f_measure(ann, [])
        assert got == pytest.approx((2 * r / (1 + r), 1.0, r), abs=TOL)


def test_f1_bounds_and_annotator_order() -> None:
    rng = np.random.default_rng(6)
    for _ in range(100):
        n = 150
        ann = _random_annotations(rng, n)
        pred = _random_cps(rng, n, int(rng.integers(0, 20)))
        got = S.f_measure(ann, pred)
        assert 0.0 < got.f1 <= 1.0 and 0.0 < got.precision <= 1.0 and 0.0 < got.recall <= 1.0
        lo, hi = sorted((got.precision, got.recall))
        assert lo - TOL <= got.f1 <= hi + TOL
        reordered = dict(reversed(list(ann.items())))
        assert S.f_measure(reordered, pred) == pytest.approx(got, abs=TOL)


# ----------------------------------------------------------------------------
# Cover
# ----------------------------------------------------------------------------
def test_segments() -> None:
    assert S.segments([], 5) == [(0, 5)]
    assert S.segments([3, 0, 3, 1], 5) == [(0, 1), (1, 3), (3, 5)]
    with pytest.raises(ValueError):
        S.segments([5], 5)
    with pytest.raises(ValueError):
        S.segments([-1], 5)


def test_cover_hand_computed() -> None:
    ann = {"a": [10], "b": [12, 30]}
    n = 50
    # Prediction [0,11) [11,40) [40,50).
    # a: [0,10) best J = 10/11 (with [0,11)); [10,50) best J = 29/40 (with [11,40)).
    cover_a = (10 * 10 / 11 + 40 * 29 / 40) / n
    # b: [0,12) J = 11/12; [12,30) J = 18/29; [30,50) J = 10/20 (with [40,50)).
    cover_b = (12 * 11 / 12 + 18 * 18 / 29 + 20 * 10 / 20) / n
    assert S.covering(ann, [11, 40], n) == pytest.approx((cover_a + cover_b) / 2, abs=TOL)
    assert S.covering(ann, [11, 40], n) == pytest.approx(0.7026332288401254, abs=1e-12)


def test_zero_detector_cover_closed_form() -> None:
    # One predicted segment [0, n): J(A, [0, n)) = |A| / n, so C = sum |A|^2 / n^2.
    rng = np.random.default_rng(7)
    for _ in range(100):
        n = int(rng.integers(10, 400))
        ann = _random_annotations(rng, n)
        want = np.mean(
            [sum((b - a) ** 2 for a, b in S.segments(cps, n)) / n**2 for cps in ann.values()]
        )
        assert S.covering(ann, [], n) == pytest.approx(float(want), abs=TOL)


def test_cover_bounds_and_mirror_symmetry() -> None:
    # Reversing time maps a change point c to n - c and keeps every |A n B|, |A u B|.
    rng = np.random.default_rng(8)
    for _ in range(100):
        n = int(rng.integers(10, 300))
        ann = _random_annotations(rng, n)
        pred = _random_cps(rng, n, int(rng.integers(0, 15)))
        got = S.covering(ann, pred, n)
        assert 0.0 < got <= 1.0 + TOL
        mirrored = S.covering(
            {k: [n - c for c in v] for k, v in ann.items()}, [n - c for c in pred], n
        )
        assert mirrored == pytest.approx(got, abs=1e-12)


def test_cover_single_is_one_only_for_equal_segmentations() -> None:
    g = S.segments([10, 25], 40)
    assert S.cover_single(g, g) == pytest.approx(1.0, abs=TOL)
    assert S.cover_single(g, S.segments([10, 26], 40)) < 1.0
    with pytest.raises(ValueError):
        S.cover_single(g, S.segments([10], 41))


def test_rejects_bad_input() -> None:
    with pytest.raises(ValueError):
        S.f_measure({}, [1])
    with pytest.raises(ValueError):
        S.f_measure({"a": [1.5]}, [1])  # type: ignore[list-item]
    with pytest.raises(ValueError):
        S.covering({"a": [3]}, [12], 10)
    assert math.isfinite(S.f_measure({"a": []}, []).f1)
