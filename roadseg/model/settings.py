"""The network's configuration, typed and checked in one place, free of TensorFlow so that
options are checked before it loads.

`NetworkConfig` is what build_network needs, and nothing else: no data folder, no flags. Its
compatibility rules are one table (RULES); main.py's options, the benchmarks and the tests all
build their networks through it.
"""
import dataclasses
import math

from roadseg.model import DECODERS, TIRAMISU_DEPTHS, imagenet
from roadseg.settings import Settings

ENCODERS = ('vgg16', 'mobilenetv2', 'tiramisu')
# The decoder an encoder gets when none is given
OWN_DECODER = {'vgg16': 'fcn8s', 'mobilenetv2': 'fcn8s', 'tiramisu': 'tiramisu'}


def _in_graph(config):
    return config.encoder_weights != 'udacity'


def _keras(config):
    """Whether the encoder starts from a Keras weights file (keras-h5:PATH, or imagenet's)."""
    return config.encoder_weights == 'imagenet' or config.encoder_weights.startswith('keras-h5:')


# (the rule a configuration keeps, what to say when it does not), in the order they are checked
RULES = (
    (lambda c: c.encoder in ENCODERS,
     lambda c: f'--encoder {c.encoder}: use one of {", ".join(ENCODERS)}'),
    (lambda c: c.decoder in DECODERS or c.decoder == 'tiramisu',
     lambda c: f'--decoder {c.decoder}: use one of {", ".join([*DECODERS, "tiramisu"])}'),
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
    (lambda c: c.encoder == 'vgg16' or c.encoder_weights == 'none'
     or c.encoder == 'mobilenetv2' and _keras(c),
     lambda c: f'--encoder {c.encoder} takes --encoder-weights none'
               + (", imagenet or keras-h5:PATH (Keras's MobileNetV2 file)"
                  if c.encoder == 'mobilenetv2' else ' (it trains from scratch)')
               + ('; udacity is a VGG16 encoder' if c.encoder_weights == 'udacity' else
                  f'; {c.encoder_weights} is for vgg16 and mobilenetv2')),
    (lambda c: c.encoder != 'mobilenetv2' or c.encoder_weights == 'none' or c.alpha == 1.0,
     lambda c: f"--alpha {c.alpha}: Keras's MobileNetV2 weights are of width 1.0; give "
               f"--alpha 1.0 with --encoder-weights imagenet or keras-h5"),
    (lambda c: c.encoder != 'tiramisu' or c.decoder == 'tiramisu',
     lambda c: f'--decoder {c.decoder} is for mobilenetv2; --encoder tiramisu has its own '
               f'decoder (--decoder tiramisu)'),
    (lambda c: c.decoder != 'tiramisu' or c.encoder == 'tiramisu',
     lambda c: f"--decoder tiramisu is FC-DenseNet's own; give --encoder tiramisu "
               f"(not {c.encoder})"),
    (lambda c: c.encoder != 'vgg16' or c.decoder == 'fcn8s',
     lambda c: f'--decoder {c.decoder} is for mobilenetv2; VGG16 uses fcn8s'),
    (lambda c: math.isfinite(c.aux_loss) and c.aux_loss >= 0,
     lambda c: f'--aux-loss: {c.aux_loss} must be a number from 0 up'),
    (lambda c: c.aux_loss == 0 or c.encoder == 'mobilenetv2' and c.decoder != 'fpn',
     lambda c: f'--aux-loss is for --encoder mobilenetv2 with an FCN decoder (fcn8s, fcn4s, '
               f'dilated), not {c.encoder} with {c.decoder}'),
    (lambda c: c.input_norm in ('fixed', 'image'),
     lambda c: f'--input-norm {c.input_norm}: use fixed or image'),
    (lambda c: c.depth in TIRAMISU_DEPTHS,
     lambda c: f'--depth {c.depth}: use one of {", ".join(map(str, TIRAMISU_DEPTHS))}'),
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
    decay (0: none). Checked against RULES when made."""
    encoder: str = 'vgg16'
    decoder: str = None
    encoder_weights: str = 'none'
    alpha: float = 1.0
    depth: int = 103
    input_norm: str = 'fixed'
    aux_loss: float = 0.0
    weight_decay: float = 1e-3
    ema_decay: float = 0.0
    RULES = RULES

    def __post_init__(self):
        if self.decoder is None and self.encoder in OWN_DECODER:
            object.__setattr__(self, 'decoder', OWN_DECODER[self.encoder])
        super().__post_init__()

    def keras_file(self, fetch=False):
        """The Keras weights file the encoder starts from, or None: keras-h5's PATH, or the
        ImageNet file in data/ (downloaded first with `fetch`)."""
        if self.encoder_weights.startswith('keras-h5:'):
            return self.encoder_weights[len('keras-h5:'):]
        if self.encoder_weights == 'imagenet':
            return (imagenet.fetch if fetch else imagenet.path)(self.encoder)
        return None
