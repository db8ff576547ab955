"""Plot the per-epoch curves of one or more runs from their metrics.json: training loss and the
validation IoU that picks the best model (road IoU for two classes, mean IoU otherwise), against
the epoch or, with --minutes, against the wall-clock minutes of training.

    python plot.py runs/20261121-192051 runs/20261121-203000 --output curve.png --minutes
"""
import argparse
import math
import os
import sys

from roadseg import cli, files
from roadseg.errors import UserError


def read_run(run_dir):
    """(label, epochs, minutes, training losses, validation IoUs) of a run folder."""
    path = os.path.join(run_dir, 'metrics.json')
    hint = 'not a run folder with metrics.json and config.json'
    records = files.read_json(path, hint, 'metrics')['epochs']
    config = files.read_json(os.path.join(run_dir, 'config.json'), hint, 'config',
                             ('image_shape',))
    if not records:
        raise UserError(f'{path}: no epoch recorded yet')
    encoder = config.get('encoder', 'vgg16')
    if encoder == 'mobilenetv2':
        encoder += '-' + (config.get('decoder') or 'fcn8s')  # null: the encoder's own
    elif encoder == 'tiramisu':
        encoder += str(config['depth'])
    if config.get('ema_decay'):
        encoder += f' EMA {config["ema_decay"]:g}'
    shape = config['image_shape']
    if config.get('train_crop'):  # save_config writes null for whole images
        shape += f' crops {config["train_crop"]}'
    if 'batch_size' in config:
        shape += f' batch {config["batch_size"]}'
    label = f'{encoder} {shape} ({os.path.basename(os.path.normpath(run_dir))})'
    minutes, total = [], 0.0
    for record in records:
        total += record.get('seconds', float('nan')) / 60
        minutes.append(total)
    return (label, [r['epoch'] for r in records], minutes,
            [r['train_loss'] for r in records], [r.get('key_metric') for r in records])


def plot(runs, output, by_minutes=False, iou_min=None):
    """Write the two-panel figure of `runs` (read_run tuples) to the PNG `output`; `iou_min`
    cuts the IoU axis there, so that early epochs do not flatten the later ones."""
    import matplotlib
    matplotlib.use('Agg')  # no display needed
    import matplotlib.pyplot as plt
    legend_rows = -(-len(runs) // 2)  # the legend goes below both panels, two runs a row
    legend_height = 0.2 + 0.2 * legend_rows
    height = 4 + legend_height  # inches: the panels take 4
    figure, (loss_axis, iou_axis) = plt.subplots(1, 2, figsize=(11, height), dpi=100)
    for label, epochs, minutes, losses, ious in runs:
        x = minutes if by_minutes else epochs
        line, = loss_axis.plot(x, losses, marker='.', label=label)
        validated = [(at, v) for at, v in zip(x, ious) if v is not None]  # --val-every gaps
        if validated:
            iou_axis.plot(*zip(*validated), marker='.', color=line.get_color())
    for axis, title in ((loss_axis, 'training loss'), (iou_axis, 'validation IoU (inference)')):
        axis.set_xlabel('training minutes' if by_minutes else 'epoch')
        axis.set_title(title)
        axis.grid(alpha=0.3)
    loss_axis.set_yscale('log')
    if iou_min is not None:
        iou_axis.set_ylim(bottom=iou_min)
    figure.legend(*loss_axis.get_legend_handles_labels(), loc='lower center', ncol=2,
                  fontsize=8, frameon=False)
    figure.tight_layout(rect=(0, legend_height / height, 1, 1))
    with files.atomic_path(output) as tmp:
        figure.savefig(tmp, format='png')
    plt.close(figure)


def iou_min_arg(text):
    """Parse --iou-min: a finite number below 1, the most an IoU can be."""
    try:
        value = float(text)
    except ValueError:
        value = None
    if value is None or not math.isfinite(value) or value >= 1:
        raise argparse.ArgumentTypeError(f'{text!r} is not a number below 1, e.g. 0.85')
    return value


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('runs', nargs='+', metavar='RUN_DIR', help='run folders to plot')
    parser.add_argument('--output', help='PNG to write (default: curve.png in the first run '
                                         'folder)')
    parser.add_argument('--minutes', action='store_true',
                        help='x axis in wall-clock minutes of training instead of epochs')
    parser.add_argument('--iou-min', type=iou_min_arg,
                        help='lower end of the IoU axis, a number below 1, e.g. 0.85')
    args = parser.parse_args(argv)
    output = args.output or os.path.join(args.runs[0], 'curve.png')
    files.check_writable(os.path.dirname(os.path.abspath(output)), '--output')
    files.check_outputs([(output, '--output')], [os.path.join(run, name) for run in args.runs
                                                 for name in ('metrics.json', 'config.json')])
    plot([read_run(run) for run in args.runs], output, args.minutes, args.iou_min)
    print(f'wrote {output}')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
