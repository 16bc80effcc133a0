"""metrics: the numbers evaluate reports, checked by hand and against Keras' own loss."""

from __future__ import annotations

import numpy as np
import pytest

from toonvision.metrics import (
    classification_metrics,
    confusion_matrix,
    decide,
    log_loss,
    row_normalise,
    worst_mistakes,
)


def test_metrics_equal_a_hand_computed_confusion_matrix():
    y_true = [0, 0, 0, 0, 1, 1, 2, 2, 2]
    y_pred = [0, 0, 1, 2, 1, 1, 2, 0, 1]
    # actual 0: predicted 0,0,1,2; actual 1: 1,1; actual 2: 2,0,1
    expected = [[2, 1, 1], [0, 2, 0], [1, 1, 1]]
    assert confusion_matrix(y_true, y_pred, 3).tolist() == expected
    m = classification_metrics(y_true, y_pred, ("a", "b", "c"))
    assert m.confusion == tuple(map(tuple, expected))
    assert m.accuracy == pytest.approx(5 / 9)
    # precision: TP / column sum (3, 4, 2); recall: TP / row sum (4, 2, 3)
    precision, recall = [2 / 3, 2 / 4, 1 / 2], [2 / 4, 2 / 2, 1 / 3]
    f1 = [2 * p * r / (p + r) for p, r in zip(precision, recall, strict=True)]
    assert [s.precision for s in m.per_class] == pytest.approx(precision)
    assert [s.recall for s in m.per_class] == pytest.approx(recall)
    assert [s.f1 for s in m.per_class] == pytest.approx(f1)  # 4/7, 2/3, 2/5
    assert [s.support for s in m.per_class] == [4, 2, 3]
    assert (m.macro.precision, m.macro.recall, m.macro.f1) == pytest.approx((5 / 9, 11 / 18, np.mean(f1)))
    weights = np.array([4, 2, 3]) / 9
    assert m.weighted.precision == pytest.approx(31 / 54)
    assert m.weighted.recall == pytest.approx(m.accuracy)  # always so
    assert m.weighted.f1 == pytest.approx(float(np.dot(f1, weights)))
    assert m.macro.support == m.weighted.support == 9
    table = m.table({"a": "Apple"})
    assert "a (Apple)" in table and "macro avg" in table and "weighted avg" in table


@pytest.mark.parametrize(
    "y_true, y_pred, classes, precision, recall, f1",
    [
        # class b never predicted: precision 0 (no division by zero), F1 0
        ([0, 1, 1], [0, 0, 0], ("a", "b"), [1 / 3, 0.0], [1.0, 0.0], [0.5, 0.0]),
        # perfect
        ([0, 1, 2], [0, 1, 2], ("a", "b", "c"), [1.0] * 3, [1.0] * 3, [1.0] * 3),
    ],
)
def test_per_class_scores_edge_cases(y_true, y_pred, classes, precision, recall, f1):
    m = classification_metrics(y_true, y_pred, classes)
    assert [s.precision for s in m.per_class] == pytest.approx(precision)
    assert [s.recall for s in m.per_class] == pytest.approx(recall)
    assert [s.f1 for s in m.per_class] == pytest.approx(f1)


def test_row_normalise_and_worst_mistakes():
    assert row_normalise([[2, 2], [0, 0]]).tolist() == [[0.5, 0.5], [0.0, 0.0]]
    # wrong: indices 1 (0.9), 2 (0.6), 4 (0.9): most confident first, ties in file order
    assert worst_mistakes([0, 0, 1, 1, 0], [0, 1, 0, 1, 1], [0.99, 0.9, 0.6, 0.8, 0.9], 10) == [1, 4, 2]
    assert worst_mistakes([0, 0], [1, 1], [0.5, 0.7], 1) == [1]


def test_binary_decision_and_loss_match_keras():
    keras = pytest.importorskip("keras")
    p = np.array([0.2, 0.5, 0.5000001, 0.9, 1.0], dtype="float32")
    probabilities = np.stack([1 - p, p], axis=1)
    indices, confidence = decide(probabilities)
    assert indices.tolist() == (p > 0.5).astype(int).tolist()  # Keras' BinaryAccuracy threshold
    assert confidence.tolist() == pytest.approx(np.maximum(p, 1 - p).tolist())
    y = np.array([0, 1, 1, 0, 1])
    keras_loss = float(keras.losses.BinaryCrossentropy()(y.reshape(-1, 1).astype("float32"), p.reshape(-1, 1)))
    assert log_loss(y, probabilities) == pytest.approx(keras_loss, rel=1e-5)

