"""The network's configuration, typed and checked in one place, free of TensorFlow so that
options are checked before it loads.

`NetworkConfig` is what build_network needs, and nothing else: no data folder, no flags. Its
general rules are one table (RULES); the encoders' and decoders' own come from their entries
(registry.py). main.py's options, the benchmarks and the tests all build their networks
through it.
"""
import argparse
import dataclasses
import math
import os
import typing

from roadseg.model import imagenet, registry
from roadseg.model.entries import tiramisu
from roadseg.settings import Settings, option

INPUT_NORMS = ('fixed', 'image')
# Where the chosen decoder's and encoder's own rules are checked among RULES
CHOSEN = "the chosen decoder's and encoder's rules"


def encoder_weights_arg(text):
    """Parse `udacity`, `imagenet`, `none` or `keras-h5:PATH`."""
    if text in ('udacity', 'imagenet', 'none'):
        return text
    if text.startswith('keras-h5:'):
        if not os.path.isfile(text[len('keras-h5:'):]):
            raise argparse.ArgumentTypeError(f'{text[len("keras-h5:"):]}: file not found')
        return text
    raise argparse.ArgumentTypeError(f'{text!r}: use udacity, imagenet, none or keras-h5:PATH')


def _in_graph(config):
    return config.encoder_weights != 'udacity'


def _keras(config):
    """Whether the encoder starts from a Keras weights file (keras-h5:PATH, or imagenet's)."""
    return config.encoder_weights == 'imagenet' or config.encoder_weights.startswith('keras-h5:')


def weights_kind(config):
    """What the encoder's weights are: udacity, imagenet, none or keras-h5 (keras-h5:PATH)."""
    return 'keras-h5' if config.encoder_weights.startswith('keras-h5:') else config.encoder_weights


def _takers(config):
    """The encoders that take weights of `config`'s kind, for a message."""
    return ' and '.join(name for name, encoder in registry.ENCODERS.items()
                        if weights_kind(config) in encoder.weights)


def _with_aux_loss(table):
    return [name for name, entry in table.items() if entry.aux_loss]


# (the rule a configuration keeps, what to say when it does not), in the order they are checked;
# the choices of a field are checked before them (Settings)
RULES = (
    (lambda c: c.encoder_weights in ('udacity', 'none') or _keras(c),
     lambda c: f'--encoder-weights {c.encoder_weights!r}: use udacity, imagenet, none or '
               f'keras-h5:PATH'),
    (lambda c: c.ema_decay == 0 or _in_graph(c),
     lambda c: '--ema-decay needs an encoder built in the graph (--encoder-weights none, '
               'imagenet or keras-h5:PATH); the frozen udacity VGG16 has a single tower'),
    (lambda c: c.input_norm == 'fixed' or _in_graph(c),
     lambda c: '--input-norm image needs an encoder built in the graph (--encoder-weights '
               'none, imagenet or keras-h5:PATH); the frozen udacity VGG16 takes its input as '
               'it is'),
    (lambda c: weights_kind(c) in registry.ENCODERS[c.encoder].weights,
     lambda c: f'--encoder {c.encoder} takes --encoder-weights '
               f'{registry.ENCODERS[c.encoder].weights_help}'
               + ('; udacity is a VGG16 encoder' if c.encoder_weights == 'udacity' else
                  f'; {c.encoder_weights} is for {_takers(c)}')),
    CHOSEN,
    (lambda c: math.isfinite(c.aux_loss) and c.aux_loss >= 0,
     lambda c: f'--aux-loss: {c.aux_loss} must be a number from 0 up'),
    (lambda c: c.aux_loss == 0 or registry.ENCODERS[c.encoder].aux_loss
     and registry.DECODERS[c.decoder].aux_loss,
     lambda c: f'--aux-loss is for --encoder {" or ".join(_with_aux_loss(registry.ENCODERS))} '
               f'with an FCN decoder ({", ".join(_with_aux_loss(registry.DECODERS))}), not '
               f'{c.encoder} with {c.decoder}'),
    (lambda c: math.isfinite(c.alpha) and c.alpha > 0,
     lambda c: f'--alpha: {c.alpha} must be a number above 0'),
    (lambda c: math.isfinite(c.weight_decay) and c.weight_decay >= 0,
     lambda c: f'--weight-decay: {c.weight_decay} must be a number from 0 up'),
    (lambda c: 0 <= c.ema_decay < 1,
     lambda c: f'--ema-decay: {c.ema_decay} must be in [0, 1)'),
)


@dataclasses.dataclass(frozen=True)
class NetworkConfig(Settings):
    """The network build_network makes: the encoder (vgg16, mobilenetv2 with width `alpha`,
    or tiramisu at `depth`), its decoder (None: the encoder's own), where the encoder's weights
    come from (udacity, imagenet, none, keras-h5:PATH), the input normalisation (fixed or
    image), the auxiliary loss's weight (0: none), the L2 weight decay and the weight averages'
    decay (0: none). Checked against RULES, with its encoder's and decoder's, when made."""
    encoder: str = option(
        'vgg16', 'the backbone; tiramisu: FC-DenseNet, an encoder-decoder of its own, trained '
                 'from scratch (default: %(default)s)', choices=tuple(registry.ENCODERS))
    decoder: typing.Optional[str] = option(
        None, "mobilenetv2's decoder: fcn8s, the FCN decoder on strides 8/16/32; fcn4s adds a "
              "stride-4 skip; dilated: stride-16/32 stages dilated with skips at 8/4; fpn: "
              "strides 4-32 merged as features (a feature pyramid), scored once; tiramisu: "
              "FC-DenseNet's own up path (default: the encoder's own: fcn8s, tiramisu for "
              "tiramisu)", choices=tuple(registry.DECODERS))
    encoder_weights: str = option(
        'udacity', "udacity (data-dir/vgg, downloaded if absent), imagenet (Keras's ImageNet file "
                "of the encoder, downloaded into data/ if absent), keras-h5:PATH (Keras's VGG16 "
                "or, for --encoder mobilenetv2, MobileNetV2 ImageNet file) or none (from "
                "scratch) (default: %(default)s)", parse=encoder_weights_arg)
    alpha: float = option(1.0, "mobilenetv2's width multiplier (default: %(default)s)")
    depth: int = option(
        103, "FC-DenseNet's depth, as the paper's 56, 67 and 103 (default: %(default)s)",
        choices=tuple(tiramisu.DEPTHS))
    input_norm: str = option(
        'fixed', "fixed: the encoder's own scaling of 0..255 values; image: first each image's "
                 "channels to one mean and deviation, in the graph, for other light (in-graph "
                 "encoders) (default: %(default)s)", choices=INPUT_NORMS)
    aux_loss: float = option(
        0.0, "deep supervision for mobilenetv2's FCN decoders: add W times the cross-entropy "
             "of a 1x1 class score of the decoder's layer-4 features (stride 16) to the loss, "
             "in training only (PSPNet uses 0.4); 0: none (default: %(default)s)", metavar='W')
    weight_decay: float = option(1e-3, 'L2 on the decoder weights (default: %(default)s)')
    ema_decay: float = option(
        0.0, 'validate, export and deploy an exponential moving average of the weights with '
             'this decay per step, e.g. 0.9995, its batch-norm statistics measured on 32 '
             'training images before every validation; 0: the weights themselves '
             '(default: %(default)s)')

    def __post_init__(self):
        if self.decoder is None and self.encoder in registry.ENCODERS:
            object.__setattr__(self, 'decoder', registry.ENCODERS[self.encoder].decoder)
        super().__post_init__()

    @property
    def RULES(self):  # read by Settings once the encoder and decoder are known ones
        """RULES with the decoder's, then the encoder's own rules in place of CHOSEN."""
        chosen = (*registry.DECODERS[self.decoder].rules, *registry.ENCODERS[self.encoder].rules)
        return tuple(rule for item in RULES for rule in (chosen if item is CHOSEN else (item,)))

    def keras_file(self, fetch=False):
        """The Keras weights file the encoder starts from, or None: keras-h5's PATH, or the
        ImageNet file in data/ (downloaded first with `fetch`)."""
        if self.encoder_weights.startswith('keras-h5:'):
            return self.encoder_weights[len('keras-h5:'):]
        if self.encoder_weights == 'imagenet':
            return (imagenet.fetch if fetch else imagenet.path)(self.encoder)
        return None
