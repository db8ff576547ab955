"""roadseg: the library behind the top-level scripts (main.py, evaluate.py, predict.py, ...).

Modules by role, each importing only those listed before it:

    errors, graph_mode, cli     one-line errors, TensorFlow in graph mode, the scripts' plumbing
    files, images               atomic writes, JSON, downloads, extraction; image reading/resizing
    metrics                     the streaming confusion matrix and KITTI's MaxF/AP
    data/                       class files, data sets, their groups and split, transforms, batches
    bev                         KITTI's bird's-eye view: calibration, the devkit's warp, scoring
    model/                      graph ops, the VGG16 and MobileNetV2 encoders, decoders, network
    inference                   load_model / segment / overlay: the one inference path
    evaluation                  scoring a model on labelled images
    training/                   options, loss, training loop, checkpoints, the run folder
    media                       predict.py's image and video inputs and outputs
    export                      frozen graph, serving SavedModel and TFLite exports, checked
    serving                     serve.py's HTTP app: TensorFlow Serving's API, the page, batching
"""
