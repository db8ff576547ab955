"""The network: graph ops, the VGG16 and MobileNetV2 encoders, the decoders, FC-DenseNet
(Tiramisu), and both towers. Encoders and decoders are found by name in registry.py; their
entries (entries/) and the network's configuration (config.py) are free of TensorFlow, so that
the options are checked before it loads."""
