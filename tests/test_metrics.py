"""edge_resnet.validate.metrics against values computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from edge_resnet.validate.metrics import (
    StreamingMetrics,
    confusion_matrix,
    cosine_similarity,
    per_class_accuracy,
    sqnr_db,
    sqnr_from_energy,
    top1_agreement,
    top_k,
    top_k_accuracy,
)

# 4 images, 3 classes
SCORES = np.array([[0.1, 0.7, 0.2],   # top-1 = 1, order 1, 2, 0
                   [0.5, 0.3, 0.2],   # top-1 = 0, order 0, 1, 2
                   [0.2, 0.2, 0.6],   # top-1 = 2, then the tie 0/1 -> 0 first
                   [0.3, 0.3, 0.4]])  # top-1 = 2, then 0
LABELS = np.array([1, 1, 0, 2])


def test_top_k_order_and_ties():
    assert top_k(SCORES, 2).tolist() == [[1, 2], [0, 1], [2, 0], [2, 0]]
    assert top_k(SCORES, 10).shape == (4, 3)  # k is clipped to the number of classes


def test_top_k_accuracy_by_hand():
    # top-1 predictions 1, 0, 2, 2 vs labels 1, 1, 0, 2: rows 0 and 3 right
    assert top_k_accuracy(SCORES, LABELS, 1) == pytest.approx(2 / 4)
    # top-2 sets {1,2} {0,1} {2,0} {2,0}: rows 0, 1, 2, 3 all contain their label
    assert top_k_accuracy(SCORES, LABELS, 2) == pytest.approx(4 / 4)


def test_agreement_by_hand():
    other = np.array([[0.0, 1.0, 0.0], [0.0, 1.0, 0.0], [0.0, 0.0, 1.0], [1.0, 0.0, 0.0]])  # argmax 1, 1, 2, 0
    assert top1_agreement(SCORES, other) == pytest.approx(2 / 4)  # rows 0 and 2
    assert top1_agreement(SCORES, SCORES) == 1.0


def test_cosine_by_hand():
    ref = np.array([[1.0, 0.0], [1.0, 1.0], [3.0, 4.0], [0.0, 0.0], [0.0, 0.0]])
    out = np.array([[0.0, 1.0], [2.0, 2.0], [-3.0, -4.0], [0.0, 0.0], [1.0, 0.0]])
    np.testing.assert_allclose(cosine_similarity(ref, out), [0.0, 1.0, -1.0, 1.0, 0.0], atol=1e-12)


def test_cosine_flattens_feature_maps():
    a = np.arange(2 * 3 * 2 * 2, dtype=np.float64).reshape(2, 3, 2, 2) + 1
    np.testing.assert_allclose(cosine_similarity(a, 2 * a), [1.0, 1.0])


def test_sqnr_by_hand():
    ref = np.array([[3.0, 4.0]])  # signal 9 + 16 = 25
    out = np.array([[3.0, 3.0]])  # noise 1
    assert sqnr_db(ref, out) == pytest.approx(10 * math.log10(25))
    assert sqnr_db(np.array([[10.0]]), np.array([[9.0]])) == pytest.approx(20.0)  # 100 / 1
    assert sqnr_db(ref, ref) == math.inf  # identical outputs
    assert sqnr_from_energy(0.0, 1.0) == -math.inf


def test_confusion_and_per_class_by_hand():
    labels = np.array([0, 0, 1, 1, 1, 2])
    preds = np.array([0, 1, 1, 1, 0, 1])
    cm = confusion_matrix(labels, preds, 4)
    expected = np.zeros((4, 4), int)
    expected[0, 0] = 1
    expected[0, 1] = 1
    expected[1, 1] = 2
    expected[1, 0] = 1
    expected[2, 1] = 1
    np.testing.assert_array_equal(cm, expected)
    support, acc = per_class_accuracy(labels, preds, 4)
    assert support.tolist() == [2, 3, 1, 0]
    np.testing.assert_allclose(acc[:3], [0.5, 2 / 3, 0.0])
    assert np.isnan(acc[3])  # no images of class 3


def test_streaming_equals_whole_arrays():
    rng = np.random.default_rng(0)
    ref = rng.standard_normal((50, 7))
    out = ref + 0.3 * rng.standard_normal((50, 7))
    labels = rng.integers(0, 7, 50)
    m = StreamingMetrics(7)
    for s in range(0, 50, 16):  # uneven batches
        m.update(ref[s:s + 16], out[s:s + 16], labels[s:s + 16])
    assert m.count == 50 and m.labelled == 50
    assert m.agreement == pytest.approx(top1_agreement(ref, out))
    assert m.sqnr == pytest.approx(sqnr_db(ref, out))
    cos = cosine_similarity(ref, out)
    assert m.cosine_mean == pytest.approx(cos.mean()) and m.cos_min == pytest.approx(cos.min())
    for k in (1, 5):
        assert m.accuracy("float", k) == pytest.approx(top_k_accuracy(ref, labels, k))
        assert m.accuracy("int8", k) == pytest.approx(top_k_accuracy(out, labels, k))
    np.testing.assert_array_equal(m.confusion["int8"], confusion_matrix(labels, out.argmax(1), 7))
    assert np.trace(m.confusion["float"]) / 50 == pytest.approx(m.accuracy("float", 1))


def test_streaming_without_labels_or_classes():
    ref = np.array([[1.0, 2.0], [3.0, 1.0]])
    m = StreamingMetrics(2)
    m.update(ref, ref)
    assert m.agreement == 1.0 and m.accuracy("float", 1) is None and m.sqnr == math.inf
    assert m.accuracy("float", 5) is None  # top-5 of 2 classes is not reported
    features = StreamingMetrics(None)
    features.update(ref, ref * 2)
    assert features.agreement is None and features.cosine_mean == pytest.approx(1.0)
