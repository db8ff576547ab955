"""Keras's published weight files (.h5, the Keras 2 layout its ImageNet weights come in), read
and loaded into the graph's variables: the VGG16 and MobileNetV2 encoders start from them with
--encoder-weights keras-h5:PATH."""
import numpy as np

from roadseg.errors import UserError
from roadseg.model.ops import tf, tf1


def read(path, expected):
    """The weights of a Keras weights file (.h5, the Keras 2 layout Keras publishes its
    ImageNet weights in): {layer name: its arrays in the layer's order} (kernel then bias;
    gamma, beta, moving mean, moving variance), since the files name them in more than one
    way. `expected` names the file wanted, for the error."""
    import h5py
    try:
        with h5py.File(path, 'r') as f:
            root = f['model_weights'] if 'model_weights' in f else f
            weights = {}
            for name in root:
                group = root[name]
                names = [n.decode() if isinstance(n, bytes) else n
                         for n in group.attrs.get('weight_names', [])]
                if names:
                    weights[name] = [np.asarray(group[n]) for n in names]
    except (OSError, KeyError, AttributeError) as e:
        raise UserError(f'{path}: not a readable Keras weights file ({e}); expected '
                        f'{expected}') from None
    return weights


def assign(sess, values):
    """Set the graph's variables {name without ":0": array} (fed through placeholders, which
    replicated variables take too, rather than baked in as constants)."""
    variables = {v.name: v for v in tf1.global_variables()}
    assigns, feed = [], {}
    for name, value in values.items():
        variable = variables[f'{name}:0']
        placeholder = tf1.placeholder(tf.float32, variable.shape)
        assigns.append(variable.assign(placeholder))
        feed[placeholder] = value
    sess.run(assigns, feed)
