"""`python crossval.py`: the command of roadseg/commands/crossval.py, which pip installs as
`roadseg-crossval`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.crossval import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
