"""Choose the dense CRF's parameters (--crf) for a trained model on its run's training images,
never on a validation split: every setting of roadseg.crf.GRID is scored against the model
alone, the best five are printed, and --output writes the best one as a file for --crf.

    python choose_crf.py --model runs/20261121-143000 --data-dir data/camvid --output crf.json
"""
import itertools
import json
import os
import sys
import time

from roadseg import cli, files


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True, help='a run folder')
    parser.add_argument('--data-dir', required=True,
                        help='the data set folder the run trained on')
    parser.add_argument('--images', type=int, default=20,
                        help='how many of the training images, spread evenly (default: '
                             '%(default)s)')
    parser.add_argument('--output', help='write the best parameters to this JSON file')
    args = parser.parse_args(argv)
    if args.images < 1:
        parser.error('argument --images: must be at least 1')
    return args


def main(argv=None):
    """Score the grid on the run's training images and print the best settings."""
    args = parse_args(argv)
    if args.output:
        files.check_writable(os.path.dirname(os.path.abspath(args.output)), '--output')
    from roadseg import crf, evaluation, inference  # load TensorFlow (seconds): options first
    from roadseg.data import reading
    crf.require()
    base = crf.read_parameters()
    with inference.load_model(args.model) as model:
        dataset, pairs = evaluation.evaluation_data(args.model, args.data_dir, model.info,
                                                    'train')
        pairs = pairs[::max(1, len(pairs) // args.images)][:args.images]
        if args.output:
            files.check_outputs([(args.output, '--output')],
                                files.files_in(args.model) + [path for pair in pairs
                                                              for path in pair if path])
        samples = reading.load_samples(pairs, dataset.read_label)
        print(f'scoring {len(list(itertools.product(*crf.GRID.values())))} CRF settings on '
              f'{len(samples)} training images of {args.model}')
        start = time.perf_counter()
        results = crf.search(model, samples, base)
    shown = results[:5] + [r for r in results[5:] if r[1] is None]
    for iou, parameters in shown:
        print(f'{iou:.4f}: ' + (json.dumps(parameters) if parameters else 'no CRF'))
    print(f'{time.perf_counter() - start:.0f} s; the key metric is mean IoU, road IoU for two '
          f'classes')
    best = next(parameters for _, parameters in results if parameters)
    if results[0][1] is None:
        print('no CRF setting beats the model alone on these images: --crf does not help it')
    if args.output:
        files.write_json(args.output, best)
        print(f'wrote the best CRF setting to {args.output}')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
