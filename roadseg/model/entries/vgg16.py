"""VGG16 (model/vgg.py): Udacity's frozen graph, or built in the graph from Keras's ImageNet
weights or from scratch; FCN-8s on its pool3, pool4 and fc7."""
from roadseg.model.entries import Encoder

STRIDES = (8, 16, 32)  # of pool3, pool4 and fc7
SKIP_SCALES = (1e-4, 1e-2)  # pool3's and pool4's, the FCN paper's at-once FCN-8s

ENCODER = Encoder(
    'vgg16', 'roadseg.model.vgg:features', decoder='fcn8s', strides={'fcn8s': STRIDES},
    weights=('udacity', 'imagenet', 'none', 'keras-h5'),
    weights_help='udacity, imagenet, none or keras-h5:PATH', skip_scales=SKIP_SCALES,
    read_keras='roadseg.model.vgg:read_keras_h5', assign_keras='roadseg.model.vgg:assign_weights',
    rules=((lambda c: c.decoder == 'fcn8s',
            lambda c: f'--decoder {c.decoder} is for mobilenetv2; VGG16 uses fcn8s'),))
