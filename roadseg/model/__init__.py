"""The network: graph ops, the VGG16 and MobileNetV2 encoders, the decoders, and both towers.

DECODERS is here, free of TensorFlow, so that the options can be checked before it loads.
"""

# Strides of the features each MobileNetV2 decoder takes, finest first: (finer..., layer3,
# layer4, layer7).
DECODERS = {'fcn8s': (8, 16, 32), 'fcn4s': (4, 8, 16, 32), 'dilated': (4, 8, 8),
            'fpn': (4, 8, 16, 32)}
