"""Encoders and decoders by name: ENCODERS and DECODERS map each to its entry (entries/), which
holds its builders, imported only when the network is built, its own decoder, the weights it
takes and its own rules. Free of TensorFlow, so that options are checked before it loads.
Adding an encoder is a module in entries/ and its entry named here."""
from roadseg.model.entries import fcn, fpn, mobilenetv2, tiramisu, vgg16

# In the order the options list them
ENCODERS = {entry.name: entry for entry in (vgg16.ENCODER, mobilenetv2.ENCODER, tiramisu.ENCODER)}
DECODERS = {entry.name: entry for entry in (*fcn.DECODERS, fpn.DECODER, tiramisu.DECODER)}
