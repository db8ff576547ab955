"""The registry's entries (model/registry.py), free of TensorFlow: an encoder or a decoder by
name, its builders named as 'module:function' and imported only when the network is built,
and the rules a configuration using it keeps."""
import dataclasses
import importlib
import typing


def load(ref):
    """The function that `ref` ('module:function') names, its module imported now."""
    module, _, name = ref.partition(':')
    return getattr(importlib.import_module(module), name)


@dataclasses.dataclass(frozen=True)
class Encoder:
    """An encoder: `builder`(config, keep_prob, keras weights) makes features(images,
    training), the decoder's inputs finest first (None: its decoder is the whole network);
    `decoder`, its own; `strides`, {decoder it takes: its features' strides}; `skip_scales`,
    FCN's scales of layers 3 and 4; `weights`, the --encoder-weights it takes (udacity,
    imagenet, keras-h5, none; `weights_help` says so); whether it takes --aux-loss;
    Keras weights read by `read_keras`(path) and loaded by `assign_keras`(sess, weights);
    `rules`, (keeps(config), message(config)) pairs."""
    name: str
    builder: typing.Optional[str]
    decoder: str
    strides: dict
    weights: tuple
    weights_help: str
    skip_scales: tuple = (1, 1)
    aux_loss: bool = False
    read_keras: typing.Optional[str] = None
    assign_keras: typing.Optional[str] = None
    rules: tuple = ()


@dataclasses.dataclass(frozen=True)
class Decoder:
    """A decoder: `builder`(head, images, training) makes the logits (network.Head: the
    encoder's features and what the decoder needs); whether it takes --aux-loss; `rules`,
    (keeps(config), message(config)) pairs."""
    name: str
    builder: str
    aux_loss: bool = False
    rules: tuple = ()
