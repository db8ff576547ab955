"""FC-DenseNet (model/tiramisu.py): an encoder-decoder of its own, trained from scratch, so
both an encoder and a decoder named tiramisu."""
from roadseg.model.entries import Decoder, Encoder

# Its depths: (growth rate, layers per dense block: five down, the bottleneck, five up), from
# the paper's Table 2 and section 4
DEPTHS = {56: (12, (4,) * 11), 67: (16, (5,) * 11),
          103: (16, (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4))}

ENCODER = Encoder(
    'tiramisu', None, decoder='tiramisu', strides={'tiramisu': ()}, weights=('none',),
    weights_help='none (it trains from scratch)',
    rules=((lambda c: c.decoder == 'tiramisu',
            lambda c: f'--decoder {c.decoder} is for mobilenetv2; --encoder tiramisu has its '
                      f'own decoder (--decoder tiramisu)'),))
DECODER = Decoder(
    'tiramisu', 'roadseg.model.tiramisu:tower',
    rules=((lambda c: c.encoder == 'tiramisu',
            lambda c: f"--decoder tiramisu is FC-DenseNet's own; give --encoder tiramisu "
                      f"(not {c.encoder})"),))
