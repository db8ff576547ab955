"""`python evaluate.py`: the command of roadseg/commands/evaluate.py, which pip installs as
`roadseg-evaluate`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.evaluate import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
