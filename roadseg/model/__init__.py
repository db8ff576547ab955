"""The network: graph ops, the VGG16 and MobileNetV2 encoders, the decoders, FC-DenseNet
(Tiramisu), and both towers.

DECODERS and TIRAMISU_DEPTHS are here, free of TensorFlow, so that the options can be checked
before it loads.
"""

# Strides of the features each MobileNetV2 decoder takes, finest first: (finer..., layer3,
# layer4, layer7).
DECODERS = {'fcn8s': (8, 16, 32), 'fcn4s': (4, 8, 16, 32), 'dilated': (4, 8, 8),
            'fpn': (4, 8, 16, 32)}

# FC-DenseNet's depths: (growth rate, layers per dense block: five down, the bottleneck, five
# up), from the paper's Table 2 and section 4
TIRAMISU_DEPTHS = {56: (12, (4,) * 11), 67: (16, (5,) * 11),
                   103: (16, (4, 5, 7, 10, 12, 15, 12, 10, 7, 5, 4))}
