"""Segmentation metrics, accumulated image by image so a whole data set never sits in memory.

`ConfusionMatrix`: pixel accuracy, per-class accuracy, per-class IoU, mean IoU and
frequency-weighted IoU. `RoadMetrics`: the KITTI road devkit's pixel metrics (perspective view)
over 256 thresholds of the road probability: MaxF, AP, and precision, recall, false-positive and
false-negative rates at the MaxF threshold. Both skip void pixels: any label value that is not a
class index (the data sets store void as 255).
"""
import numpy as np

LEVELS = 256  # the devkit reads 8-bit probability PNGs: thresholds 0/255 .. 255/255


def is_road_model(num_classes):
    """Whether `num_classes` classes are road (or lane) against the rest: the one case with
    KITTI's road figures, road IoU as the key metric, road-probability outputs and a green
    overlay; every other number of classes is a street-scene model, judged on mean IoU."""
    return num_classes == 2


def key_metric_name(num_classes):
    """The name of the figure that picks and judges a model of `num_classes` classes."""
    return 'road IoU' if is_road_model(num_classes) else 'mean IoU'


def _ratio(numerator, denominator):
    """numerator / denominator elementwise, None where the denominator is 0 (JSON-friendly)."""
    numerator = np.asarray(numerator, np.float64)
    denominator = np.asarray(denominator, np.float64)
    with np.errstate(divide='ignore', invalid='ignore'):
        value = numerator / denominator
    if value.ndim == 0:
        return None if denominator == 0 else float(value)
    return [None if d == 0 else float(v) for v, d in zip(value, denominator)]


def _mean(values):
    present = [v for v in values if v is not None]
    return float(np.mean(present)) if present else None


class ConfusionMatrix:
    """A streaming confusion matrix: rows are true classes, columns predicted ones."""

    def __init__(self, num_classes):
        self.num_classes = num_classes
        self.matrix = np.zeros((num_classes, num_classes), np.int64)

    @classmethod
    def of(cls, matrix):
        """A confusion matrix holding `matrix` (counts, e.g. several summed)."""
        confusion = cls(len(matrix))
        confusion.matrix = np.asarray(matrix, np.int64)
        return confusion

    def update(self, labels, predictions):
        """Add one image (or batch): integer class maps of equal shape; void labels skipped."""
        labels = np.asarray(labels).ravel().astype(np.int64)
        predictions = np.asarray(predictions).ravel().astype(np.int64)
        valid = (labels >= 0) & (labels < self.num_classes)
        self.matrix += np.bincount(self.num_classes * labels[valid] + predictions[valid],
                                   minlength=self.num_classes ** 2).reshape(self.matrix.shape)

    def results(self):
        """The metrics as a dict; a class never labelled nor predicted has IoU None."""
        m = self.matrix
        true_positive = np.diag(m)
        labelled = m.sum(1)
        predicted = m.sum(0)
        iou = _ratio(true_positive, labelled + predicted - true_positive)
        frequency = labelled / max(m.sum(), 1)
        return {
            'pixel_accuracy': _ratio(true_positive.sum(), m.sum()),
            'class_accuracy': _ratio(true_positive, labelled),
            'mean_class_accuracy': _mean(_ratio(true_positive, labelled)),
            'iou': iou,
            'mean_iou': _mean(iou),
            'frequency_weighted_iou': float(sum(f * i for f, i in zip(frequency, iou)
                                                if i is not None)) if m.sum() else None,
            'pixels': int(m.sum()),
            'confusion': m.tolist(),
        }


def quantize(probability):
    """A probability map in 0..1 as the 8-bit levels of KITTI's submission PNGs."""
    return np.clip(np.round(np.asarray(probability) * (LEVELS - 1)), 0, LEVELS - 1).astype(np.uint8)


class RoadMetrics:
    """The KITTI road devkit's metrics from histograms of the 8-bit road probability of road and
    of not-road pixels. A pixel counts as road at threshold t when its probability is >= t."""

    def __init__(self, road_class=1):
        self.road_class = road_class
        self.road = np.zeros(LEVELS, np.int64)
        self.not_road = np.zeros(LEVELS, np.int64)

    def update(self, labels, road_probability):
        """Add one image: a class map (road_class = road, other classes not road, void skipped)
        and the road probability at the same size, in 0..1 or already quantized uint8."""
        labels = np.asarray(labels)
        levels = road_probability if np.asarray(road_probability).dtype == np.uint8 \
            else quantize(road_probability)
        self.road += np.bincount(levels[labels == self.road_class], minlength=LEVELS)
        not_road = (labels != self.road_class) & (labels < 255)
        self.not_road += np.bincount(levels[not_road], minlength=LEVELS)

    def results(self):
        """MaxF, AP (11-point, as the devkit computes it) and the rates at the MaxF threshold."""
        positives, negatives = self.road.sum(), self.not_road.sum()
        if positives == 0:
            return {'max_f': None, 'average_precision': None, 'precision': None, 'recall': None,
                    'fpr': None, 'fnr': None, 'threshold': None}
        false_negative = np.concatenate([[0], np.cumsum(self.road)[:-1]])
        false_positive = np.cumsum(self.not_road[::-1])[::-1]
        true_positive = positives - false_negative
        recall = true_positive / positives
        precision = true_positive / (true_positive + false_positive + 1e-10)
        valid = (recall > 0) | (precision > 0)
        f_measure = np.where(valid, 2 * precision * recall / (precision + recall + 1e-10), -1)
        best = int(np.argmax(f_measure))
        average_precision = np.mean([precision[valid][recall[valid] >= level].max()
                                     for level in np.arange(0, 1.1, 0.1)])
        return {
            'max_f': float(f_measure[best]),
            'average_precision': float(average_precision),
            'precision': float(precision[best]),
            'recall': float(recall[best]),
            'fpr': _ratio(false_positive[best], negatives),
            'fnr': float(false_negative[best] / positives),
            'threshold': best / (LEVELS - 1),
        }
