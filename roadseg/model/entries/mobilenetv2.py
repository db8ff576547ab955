"""MobileNetV2 (model/mobilenet.py), from scratch or from Keras's ImageNet weights (width 1.0),
under any of the FCN decoders or the feature pyramid."""
from roadseg.model.entries import Encoder

# Strides of the features each decoder takes, finest first: (finer..., layer3, layer4, layer7).
STRIDES = {'fcn8s': (8, 16, 32), 'fcn4s': (4, 8, 16, 32), 'dilated': (4, 8, 8),
           'fpn': (4, 8, 16, 32)}

ENCODER = Encoder(
    'mobilenetv2', 'roadseg.model.mobilenet:features', decoder='fcn8s', strides=STRIDES,
    weights=('none', 'imagenet', 'keras-h5'),
    weights_help="none, imagenet or keras-h5:PATH (Keras's MobileNetV2 file)", aux_loss=True,
    read_keras='roadseg.model.mobilenet:read_keras_h5',
    assign_keras='roadseg.model.keras_weights:assign',
    rules=((lambda c: c.encoder_weights == 'none' or c.alpha == 1.0,
            lambda c: f"--alpha {c.alpha}: Keras's MobileNetV2 weights are of width 1.0; give "
                      f"--alpha 1.0 with --encoder-weights imagenet or keras-h5"),))
