"""Cross-validate a training recipe: one main.py run per group (CamVid's drives), each holding
its group out and training on every other labelled image, then each validated epoch's figure
per fold with the mean, spread and pooled figure, and the epoch with the best mean.

    python crossval.py --config configs/camvid_road_mobilenetv2.json --data-dir DATA \\
        [--folds 0001TP,0006R0,0016E5] [--cv-dir runs/cv-road] [main.py options]
    python crossval.py --resume runs/cv-road

Choose the recipe and its --epochs on the mean over folds (docs/generalisation.md); then train
the model to ship on every labelled image with main.py --all-labelled for that many epochs.
Writes CV_DIR/crossval.json (the options, the folds, the summary) and CV_DIR/GROUP/<run>/.
"""
import os
import sys
import time

from roadseg import cli, files
from roadseg.data import groups
from roadseg.errors import UserError
from roadseg.training import crossval, options
from roadseg.training.config import RunConfig, values_of

SET_BY_CROSSVAL = ('--val-groups', '--all-labelled', '--no-all-labelled', '--runs-dir',
                   '--resume', '--crossval')


def parse_args(argv=None):
    """crossval.py's own options, and the main.py options it passes to every fold."""
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0], add_help=False)
    parser.add_argument('-h', '--help', action='store_true')
    parser.add_argument('--cv-dir', help='where the folds and crossval.json go (default: '
                                         'runs/cv-<time>)')
    parser.add_argument('--folds', metavar='GROUP[,GROUP..]',
                        help='the groups to hold out, one fold each (default: every group)')
    parser.add_argument('--resume', metavar='CV_DIR',
                        help='continue an interrupted cross-validation with its own options')
    args, rest = parser.parse_known_args(argv)
    if args.help:
        parser.print_help()
        print('\nEvery other option is main.py\'s (python main.py --help), given to every fold.')
        sys.exit(0)
    given = [item.split('=')[0] for item in rest if item.startswith('--')]
    taken = [flag for flag in given if flag in SET_BY_CROSSVAL]
    if taken:
        raise UserError(f'{taken[0]}: crossval.py sets it for every fold; leave it out')
    if args.resume and (rest or args.folds or args.cv_dir):
        raise UserError(f'--resume {args.resume} takes no other option: the cross-validation '
                        f'goes on with the options it was started with')
    return args, rest


def start(args, argv):
    """A new cross-validation: its folder, folds and state (the options as given, `argv`, and
    the RunConfig they make, in its JSON form), after checking the options."""
    config = options.parse_args(argv + ['--all-labelled'])
    cli.require('tensorflow')  # the folds train: stop before reading (or downloading) the data
    sizes = crossval.labelled_groups(config.data)
    folds = [g.strip() for g in args.folds.split(',') if g.strip()] if args.folds \
        else list(sizes)
    groups.check_groups(folds, sizes)
    if len(sizes) < 2:
        raise UserError(f'{config.data.data_dir}: its images form {len(sizes)} group; '
                        f'cross-validation needs two or more (--group-by)')
    cv_dir = args.cv_dir or os.path.join(config.run.runs_dir,
                                         time.strftime('cv-%Y%m%d-%H%M%S'))
    if os.path.exists(os.path.join(cv_dir, crossval.STATE)):
        raise UserError(f'--cv-dir {cv_dir}: holds a cross-validation already; continue it '
                        f'with --resume {cv_dir}, or choose another folder')
    files.check_writable(cv_dir, '--cv-dir')
    state = {'argv': argv, 'config': config.to_json(), 'folds': folds, 'sizes': sizes}
    crossval.write_state(cv_dir, state)
    return cv_dir, config, state


def resumed(cv_dir):
    """The RunConfig and state of the cross-validation in `cv_dir`: its recorded config, or
    for one started before the state held it, the options it was started with."""
    state = crossval.read_state(cv_dir)
    if 'config' in state:
        path = os.path.join(cv_dir, crossval.STATE)
        return RunConfig.from_values(values_of(state['config'], path)), state
    return options.parse_args(state['argv'] + ['--all-labelled']), state


def main(argv=None):
    args, rest = parse_args(argv)
    if args.resume:
        cv_dir, (config, state) = args.resume, resumed(args.resume)
    else:
        cv_dir, config, state = start(args, rest)
    held = ', '.join(f'{group} ({state["sizes"][group]} images)' for group in state['folds'])
    print(f'cross-validation in {cv_dir}: {len(state["folds"])} folds, holding out {held}')
    from roadseg.training import train  # TensorFlow loads here (seconds): the options are sound
    runs = crossval.run_folds(config, cv_dir, state['folds'], train.train, train.resume)
    summary = crossval.summarise(runs, state['sizes'])
    crossval.write_state(cv_dir, {**state, 'summary': summary})
    names = files.read_json(os.path.join(next(iter(runs.values())), 'model', 'fcn.json'),
                            kind='fcn')['class_names']
    print(crossval.format_summary(summary, names))
    print(f'summary written to {os.path.join(cv_dir, crossval.STATE)}')
    return summary


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
