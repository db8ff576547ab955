"""`python serve.py`: the command of roadseg/commands/serve.py, which pip installs as
`roadseg-serve`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.serve import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
