"""roadseg: the library behind the top-level scripts (main.py, evaluate.py, predict.py, ...),
and a Python API: `roadseg.load('camvid-road').segment('street.jpg')` (api.py).

Modules by role, each importing only those listed before it:

    errors, graph_mode, cli     one-line errors, TensorFlow in graph mode, the scripts' plumbing
    settings                    the typed configurations' base: fields that make their flags
    files, git, downloads, archives, images   atomic writes and bounded reads, the commit,
                                verified downloads, safe extraction; image reading/resizing
    metrics                     the streaming confusion matrix and KITTI's MaxF/AP
    data/                       config, class files, layouts, splits, groups, transforms, pipeline
    bev                         KITTI's bird's-eye view: calibration, the devkit's warp, scoring
    model/                      config, encoders and decoders by registry, graph ops, network
    model_info                  fcn.json, typed
    inference, drawing          load_model / segment: the one inference path; overlays, legends
    evaluation                  scoring a model on labelled images
    training/                   RunConfig, the command line, train(config), loss, loop, run folder
    media                       predict.py's image and video inputs and outputs
    export                      frozen graph, serving SavedModel and TFLite exports, checked
    serving/                    serve.py's HTTP app: limits, TF Serving's API, batching, the app
    commands/, console          each user command's main(argv); the roadseg-* commands pip installs
"""

import importlib

__version__ = '0.11.0'  # CHANGELOG.md says what each version changed
API = ('load', 'Segmenter')  # roadseg.load(...): the Python API (api.py), imported when used


def __getattr__(name):
    """roadseg.load and roadseg.Segmenter, from api.py on first use: `import roadseg` stays
    light for the commands, which import the package before anything else."""
    if name in API:  # by name: the package's face depends on no layer of it
        return getattr(importlib.import_module('roadseg.api'), name)
    raise AttributeError(f'module {__name__!r} has no attribute {name!r}')
