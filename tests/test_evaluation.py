import itertools
import json
import math

import numpy as np
import pytest

from keras_pneumonia.evaluation import (
    EvaluationReport,
    expected_calibration_error,
    roc_auc,
    wilson_interval,
    youden_threshold,
)


def test_report_matches_a_hand_computed_confusion_matrix():
    y = [0, 0, 0, 0, 1, 1, 1, 1, 1, 1]
    p = [0.1, 0.2, 0.7, 0.4, 0.9, 0.8, 0.3, 0.6, 0.95, 0.55]
    r = EvaluationReport.from_predictions(y, p, threshold=0.5)
    # NORMAL: 3 right, 1 wrong (0.7). PNEUMONIA: 5 right, 1 wrong (0.3).
    assert r.confusion_matrix == [[3, 1], [1, 5]]
    assert r.n == 10
    assert r.accuracy == pytest.approx(0.8)
    assert r.sensitivity == pytest.approx(5 / 6)
    assert r.specificity == pytest.approx(3 / 4)
    assert r.precision == pytest.approx(5 / 6)
    assert r.f1 == pytest.approx(5 / 6)
    # AUC by counting every (positive, negative) pair.
    pairs = [(a, b) for a, b in itertools.product(p[4:], p[:4])]
    assert r.auc == pytest.approx(sum(1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs) / len(pairs))


def test_auc_counts_ties_as_one_half():
    assert roc_auc([0, 1], [0.5, 0.5]) == pytest.approx(0.5)
    assert roc_auc([0, 0, 1, 1], [0.1, 0.4, 0.35, 0.8]) == pytest.approx(0.75)


def test_degenerate_one_class_only():
    r = EvaluationReport.from_predictions([1, 1, 1], [0.9, 0.2, 0.8], threshold=0.5)
    assert r.confusion_matrix == [[0, 0], [1, 2]]
    assert math.isnan(r.specificity) and math.isnan(r.auc)
    d = r.to_dict()
    assert d["specificity"] is None and d["auc"] is None
    json.loads(r.to_json())  # strict JSON: no NaN
    assert "n/a" in r.to_markdown()


def test_degenerate_all_predictions_one_class():
    r = EvaluationReport.from_predictions([0, 1, 0, 1], [0.9, 0.8, 0.7, 0.95], threshold=0.5)
    assert r.confusion_matrix == [[0, 2], [0, 2]]
    assert r.sensitivity == 1.0 and r.specificity == 0.0 and r.accuracy == 0.5
    r = EvaluationReport.from_predictions([0, 1], [0.1, 0.2], threshold=0.5)
    assert math.isnan(r.precision)


def test_youden_threshold_separates_and_prefers_half():
    y = np.array([0, 0, 0, 1, 1, 1])
    p = np.array([0.05, 0.1, 0.3, 0.6, 0.8, 0.9])
    for rule in (True, False):
        t = youden_threshold(y, p, one_standard_error=rule)
        assert t == 0.5  # 0.5 separates perfectly, like every threshold in (0.3, 0.6]
    with pytest.raises(ValueError, match="both classes"):
        youden_threshold([1, 1], [0.2, 0.3])


def test_youden_moves_away_from_half_only_for_a_clear_gain():
    rng = np.random.default_rng(0)
    # Many images: positives score 0.2-0.35 more often than negatives, so the best J is
    # clearly at a low threshold, far more than one standard error better than 0.5.
    y = np.r_[np.zeros(400, int), np.ones(400, int)]
    p = np.r_[rng.uniform(0.0, 0.2, 400), rng.uniform(0.2, 0.35, 300), rng.uniform(0.6, 1.0, 100)]
    t = youden_threshold(y, p)
    assert 0.19 < t < 0.21
    # Overlapping scores: the best J (at 0.42) beats 0.5 by less than one standard error.
    rng = np.random.default_rng(2)
    y = np.r_[np.zeros(50, int), np.ones(50, int)]
    p = np.r_[rng.uniform(0.0, 0.6, 50), rng.uniform(0.4, 1.0, 50)]
    strict = youden_threshold(y, p, one_standard_error=False)
    assert 0.41 < strict < 0.43
    j = [EvaluationReport.from_predictions(y, p, t) for t in (strict, 0.5)]
    assert j[0].sensitivity + j[0].specificity > j[1].sensitivity + j[1].specificity
    assert youden_threshold(y, p) == 0.5


def test_expected_calibration_error():
    assert expected_calibration_error([0, 1], [0.0, 1.0]) == pytest.approx(0.0)
    # All predicted 0.8 but only half positive: gap 0.3.
    assert expected_calibration_error([0, 1, 0, 1], [0.8] * 4) == pytest.approx(0.3)


def test_wilson_interval_contains_the_estimate():
    low, high = wilson_interval(90, 100)
    assert low < 0.9 < high
    assert (round(low, 3), round(high, 3)) == (0.826, 0.945)


def test_markdown_table_is_readable():
    text = EvaluationReport.from_predictions([0, 1], [0.2, 0.7]).to_markdown()
    assert "| accuracy | 1.0000" in text and "| NORMAL | 1 | 0 |" in text
