"""The library's own settings, installed with the package: the built-in class files
(classes/), the dense CRF's kernels (crf.json) and the recipes (recipes/, with the records of
the cross-validations that chose them in recipes/crossval/), which --config takes by name and
the checkout's configs/ links to. main.py's defaults are the fields of
training.config.RunConfig."""
import os

DIR = os.path.dirname(os.path.abspath(__file__))
RECIPES = os.path.join(DIR, 'recipes')


def recipes():
    """The recipes' names, e.g. camvid_road_mobilenetv2."""
    return sorted(name[:-5] for name in os.listdir(RECIPES) if name.endswith('.json'))


def recipe(path):
    """`path` itself when it is a file or names a folder, else the recipe it names (`NAME` or
    `NAME.json`) when there is one, so --config takes a recipe by name from any folder."""
    name = path[:-5] if path.endswith('.json') else path
    if os.path.exists(path) or os.sep in path or name not in recipes():
        return path
    return os.path.join(RECIPES, name + '.json')


def path(*parts):
    """The path of a file of these settings, e.g. path('classes', 'camvid11.json')."""
    return os.path.join(DIR, *parts)
