"""`python make_vgg.py`: the command of roadseg/commands/make_vgg.py, which pip installs as
`roadseg-make-vgg`; `--help` says what it does."""
import sys

from roadseg import cli
from roadseg.commands.make_vgg import main

if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
