"""The library's own settings, installed with the package: the built-in class files
(classes/) and the dense CRF's kernels (crf.json). main.py's defaults are the fields of
training.config.RunConfig; the recipes a user passes with --config live in the checkout's
configs/."""
import os

DIR = os.path.dirname(os.path.abspath(__file__))


def path(*parts):
    """The path of a file of these settings, e.g. path('classes', 'camvid11.json')."""
    return os.path.join(DIR, *parts)
