"""`python choose_crf.py`: the command of roadseg/commands/choose_crf.py, which pip installs as
`roadseg-choose-crf`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.choose_crf import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
