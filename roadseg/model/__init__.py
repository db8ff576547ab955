"""The network: graph ops, the VGG16 and MobileNetV2 encoders, the decoders, and both towers."""
