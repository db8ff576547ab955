"""`python export.py`: the command of roadseg/commands/export.py, which pip installs as
`roadseg-export`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.export import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
