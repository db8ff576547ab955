"""The FCN decoders (decoders.fcn): class scores of the skips added while upsampling; fcn8s on
strides 8 to 32, fcn4s with a stride-4 skip too, dilated on an output stride of 8."""
from roadseg.model.entries import Decoder

DECODERS = tuple(Decoder(name, 'roadseg.model.decoders:fcn_tower', aux_loss=True)
                 for name in ('fcn8s', 'fcn4s', 'dilated'))
