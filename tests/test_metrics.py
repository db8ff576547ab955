"""Metrics against values computed by hand."""
import numpy as np
import pytest

from roadseg import metrics

VOID = 255


def test_confusion_matrix_hand_computed():
    labels = np.array([[0, 0, 1], [1, 2, VOID]])
    predictions = np.array([[0, 1, 1], [1, 2, 0]])  # the void pixel's prediction must not count
    cm = metrics.ConfusionMatrix(3)
    cm.update(labels[:1], predictions[:1])  # streamed in two parts
    cm.update(labels[1:], predictions[1:])
    assert cm.matrix.tolist() == [[1, 1, 0], [0, 2, 0], [0, 0, 1]]
    r = cm.results()
    assert r['pixels'] == 5
    assert r['pixel_accuracy'] == pytest.approx(4 / 5)
    assert r['class_accuracy'] == pytest.approx([1 / 2, 1, 1])
    assert r['mean_class_accuracy'] == pytest.approx(5 / 6)
    # IoU = TP / (labelled + predicted - TP): 1/(2+1-1), 2/(2+3-2), 1/(1+1-1)
    assert r['iou'] == pytest.approx([1 / 2, 2 / 3, 1])
    assert r['mean_iou'] == pytest.approx((1 / 2 + 2 / 3 + 1) / 3)
    assert r['frequency_weighted_iou'] == pytest.approx(2 / 5 * 1 / 2 + 2 / 5 * 2 / 3 + 1 / 5)


def test_confusion_matrix_absent_class_has_no_iou():
    cm = metrics.ConfusionMatrix(3)
    cm.update(np.array([0, 1]), np.array([0, 1]))
    r = cm.results()
    assert r['iou'] == [1.0, 1.0, None] and r['mean_iou'] == 1.0


def road_case():
    """Four road and four not-road pixels at given 8-bit probability levels, plus void pixels
    whose levels would change every figure if they were counted as either class."""
    labels = np.array([1, 1, 1, 1, 0, 0, 0, 0, VOID, VOID, VOID])
    levels = np.array([230, 204, 77, 77, 51, 26, 90, 153, 255, 0, 128], np.uint8)
    return labels, levels


def test_road_metrics_hand_computed_best_threshold_not_half():
    labels, levels = road_case()
    road = metrics.RoadMetrics()
    road.update(labels, levels)
    r = road.results()
    # Road at level >= L. For 51 < L <= 77: TP 4, FP 2 (90, 153): P 2/3, R 1, F 0.8, the best;
    # at L = 128 (0.5): TP 2, FP 1, F = 2 * (2/3 * 1/2) / (2/3 + 1/2) = 0.571.
    assert r['max_f'] == pytest.approx(0.8, abs=1e-9)
    assert r['threshold'] == pytest.approx(52 / 255)
    assert r['precision'] == pytest.approx(2 / 3) and r['recall'] == 1.0
    assert r['fpr'] == pytest.approx(2 / 4) and r['fnr'] == 0.0
    # 11-point AP: precision 1.0 reachable for recall <= 0.5 (6 points), 2/3 above (5 points)
    assert r['average_precision'] == pytest.approx((6 * 1 + 5 * 2 / 3) / 11)


def test_road_metrics_stream_and_quantize():
    labels, levels = road_case()
    whole = metrics.RoadMetrics()
    whole.update(labels, levels / 255.0)  # probabilities in 0..1 are quantized to the same levels
    parts = metrics.RoadMetrics()
    parts.update(labels[:5], levels[:5])
    parts.update(labels[5:], levels[5:])
    assert whole.results() == parts.results()
    assert metrics.quantize(np.array([0.0, 0.5, 1.0, 1.2])).tolist() == [0, 128, 255, 255]


def test_road_metrics_without_road_pixels():
    road = metrics.RoadMetrics()
    road.update(np.array([0, 0]), np.array([10, 20], np.uint8))
    assert road.results()['max_f'] is None
