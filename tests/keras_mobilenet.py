"""Keras's own MobileNetV2 (weights=None, random batch-norm statistics) written as a weights file
in the Keras 2 layout Keras publishes its ImageNet weights in, and its features of random
images: the reference tests/test_mobilenet.py loads into this project's encoder. Run as a
script, in a process of its own: Keras needs eager execution, which roadseg turns off.

    python tests/keras_mobilenet.py WEIGHTS.h5 FEATURES.npz
"""
import sys

import h5py
import keras
import numpy as np


def main(weights_path, features_path, shape=(64, 96)):
    model = keras.applications.MobileNetV2(input_shape=(*shape, 3), include_top=False,
                                           weights=None)
    rng = np.random.default_rng(0)
    for layer in model.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            n = layer.get_weights()[0].shape[0]
            layer.set_weights([rng.uniform(0.5, 1.5, n), rng.normal(0, 0.1, n),
                               rng.normal(0, 0.1, n), rng.uniform(0.5, 1.5, n)])
    with h5py.File(weights_path, 'w') as f:
        names = []
        for layer in model.layers:
            arrays = layer.get_weights()
            if not arrays:
                continue
            group = f.create_group(layer.name)
            weight_names = [f'{layer.name}/{w.path.split("/")[-1]}:0' for w in layer.weights]
            group.attrs['weight_names'] = [n.encode() for n in weight_names]
            for name, array in zip(weight_names, arrays):
                group[name] = array.astype(np.float32)
            names.append(layer.name.encode())
        f.attrs['layer_names'] = names
    images = rng.uniform(0, 255, (2, *shape, 3)).astype(np.float32)
    features = model(images / 127.5 - 1, training=False)
    np.savez(features_path, images=images, features=np.asarray(features))


if __name__ == '__main__':
    main(*sys.argv[1:3])
