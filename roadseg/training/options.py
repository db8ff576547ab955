"""main.py's command line, generated from RunConfig's fields (one flag per option, with its
field's help, choices and default): the field defaults, then what a --config file sets, then
the flags; or, with --resume RUN_DIR, the options that run was started with. The one place an
argparse Namespace exists: everything past it takes the RunConfig."""
import argparse
import dataclasses
import os
import shlex
import sys

from roadseg import cli, configs, settings
from roadseg.errors import UserError
from roadseg.training.config import SECTIONS, RunConfig, option_fields, read_values

DESCRIPTION = ('FCN road segmentation: train on KITTI Road, CamVid or a folder of images and '
               'masks, validate, checkpoint, and write the model and overlays to a run folder.')
SKIPPED = object()  # an option's argparse default: not given on the command line


@dataclasses.dataclass(frozen=True)
class Options:
    """What main.py was asked: the run's configuration, the run folder to resume (or None),
    and the command as typed, recorded in the run's config.json."""
    config: RunConfig
    resume: str = None
    command: str = None


def add_option(group, field, default):
    """The flag of one RunConfig field: its help (showing `default`, the value in force),
    choices, metavar and parser."""
    meta, hint = field.metadata, settings.kind(field)
    shown = str(settings.to_json(field, default))
    kwargs = {'help': meta['help'] and meta['help'].replace('%(default)s', shown),
              'default': SKIPPED, 'dest': field.name}
    if hint is bool:
        kwargs['action'] = argparse.BooleanOptionalAction
    else:
        kwargs.update(type=meta.get('parse') or (hint if hint in (int, float) else str),
                      choices=meta.get('choices'), metavar=meta.get('metavar'))
    group.add_argument(settings.flag(field.name), **kwargs)


def parser_for(defaults):
    """main.py's parser, its help showing `defaults` ({option: Python value})."""
    parser = cli.ArgumentParser(description=DESCRIPTION, prog='main.py')
    parser.add_argument('--config', metavar='FILE_OR_RECIPE',
                        help='JSON file of options (a recipe, or a run\'s config.json) over the '
                             'defaults, or a recipe by name, from any folder: '
                             f'{", ".join(configs.recipes())}')
    parser.add_argument('--resume', metavar='RUN_DIR', help='continue an interrupted run from '
                        'its last checkpoint, with its options and split')
    for name, section in SECTIONS.items():  # the help lists each section's options together
        group = parser.add_argument_group(f'{name} ({section.__name__})')
        for field in dataclasses.fields(section):
            add_option(group, field, defaults[field.name])
    return parser


def field_defaults():
    """{option: its field's default}."""
    return {name: field.default for name, field in option_fields().items()}


def parse_args(argv=None):
    """The RunConfig of `argv`: the defaults, a --config file, the flags."""
    return parse(argv)[0]


def parse(argv=None):
    """(the RunConfig, the parsed Namespace) of `argv`: the defaults, a --config file, the
    flags."""
    argv = sys.argv[1:] if argv is None else list(argv)
    pre = cli.ArgumentParser(add_help=False)
    pre.add_argument('--config')
    path = pre.parse_known_args(argv)[0].config
    defaults = {**field_defaults(), **(read_values(path) if path else {})}
    args = parser_for(defaults).parse_args(argv)
    given = {name: value for name, value in vars(args).items()
             if name in defaults and value is not SKIPPED}
    return RunConfig.from_values({**defaults, **given}), args


def resume_flags():
    """The flags --resume may take: more epochs, moved data, and where and how fast it runs."""
    flags = []
    for name, field in option_fields().items():
        if field.metadata.get('on_resume'):
            flags += [settings.flag(name)] + ([settings.flag(f'no_{name}')]
                                              if settings.kind(field) is bool else [])
    return flags


def options(argv=None):
    """The Options of a new run, or of the run that --resume names: its config.json, with the
    resume_flags given (--epochs to extend it, --data-dir for data that moved, and where and
    how it runs)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    config, args = parse(argv)
    if not args.resume:
        return Options(config, command=shlex.join(['python', 'main.py', *argv]))
    path = os.path.join(args.resume, 'config.json')
    if not os.path.isfile(path):
        raise UserError(f'--resume {args.resume}: no config.json there; not a run folder')
    allowed = resume_flags()
    refused = [item.split('=')[0] for item in argv if item.startswith('--')
               and item.split('=')[0] not in allowed + ['--resume']]
    if refused:
        raise UserError(f'--resume {args.resume} takes only {", ".join(allowed)}; '
                        f'{refused[0]} would change the run: start a new run for that')
    kept = [item for index, item in enumerate(argv) if item.split('=')[0] in allowed
            or index and argv[index - 1] in allowed]
    return Options(parse_args(['--config', path] + kept), resume=args.resume)

