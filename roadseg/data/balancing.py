"""Class balancing: the loss's class weights by SegNet's median-frequency rule, so that rare
classes (poles, signs) count for as much as road and sky in a street-scene model."""
import numpy as np


def median_frequency_weights(label_maps, num_classes):
    """SegNet's median-frequency balancing: weight_c = median(freq) / freq_c, where freq_c is the
    class's pixels over all labelled pixels of the images that contain it. A class absent from
    every label gets weight 0 (it never occurs in the loss anyway). `label_maps` may be any
    iterable, read once."""
    pixels = np.zeros(num_classes)
    present_in = np.zeros(num_classes)
    for classes in label_maps:
        counts = np.bincount(classes[classes < num_classes].ravel(), minlength=num_classes)
        pixels += counts
        present_in += np.where(counts > 0, counts.sum(), 0)
    frequency = np.divide(pixels, present_in, out=np.zeros(num_classes), where=present_in > 0)
    median = np.median(frequency[frequency > 0])
    return np.divide(median, frequency, out=np.zeros(num_classes), where=frequency > 0)
