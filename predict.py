"""`python predict.py`: the command of roadseg/commands/predict.py, which pip installs as
`roadseg-predict`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.predict import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
