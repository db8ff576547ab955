"""`python plot.py`: the command of roadseg/commands/plot.py, which pip installs as
`roadseg-plot`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.plot import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
