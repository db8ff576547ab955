"""The feature pyramid decoder (decoders.fpn): features merged top-down, then scored once."""
from roadseg.model.entries import Decoder

DECODER = Decoder('fpn', 'roadseg.model.decoders:fpn_tower')
