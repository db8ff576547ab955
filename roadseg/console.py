"""The commands pip installs (pyproject's [project.scripts]): `roadseg-train`, `roadseg-predict`
and the rest, each running its command module's `main` (roadseg.commands) under
cli.main_guard, as the top-level scripts do: one-line errors and an exit status. The module is
imported only when its command runs."""
import importlib
import sys

from roadseg import cli

NAMES = ('train', 'crossval', 'evaluate', 'predict', 'export', 'serve', 'plot', 'choose_crf',
         'make_vgg')


def command(name):
    """The installed command `roadseg-NAME` (underscores as dashes)."""
    def run():
        sys.exit(cli.main_guard(importlib.import_module(f'roadseg.commands.{name}').main))
    run.__name__ = run.__qualname__ = name
    return run


train, crossval, evaluate, predict, export, serve, plot, choose_crf, make_vgg = map(command,
                                                                                    NAMES)
