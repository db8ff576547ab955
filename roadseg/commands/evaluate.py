"""Evaluate a trained model on labelled images of the data set it was trained on.

Prints per-class accuracy and IoU, pixel accuracy, mean and frequency-weighted IoU, for two
classes the KITTI road devkit's MaxF/AP figures, and the inference time per image; writes
metrics.json and, with --save-images, overlays and (two classes) 8-bit road-probability PNGs,
KITTI's submission format. With --bev (KITTI, images with calib/ files), also the devkit's
figures in the bird's-eye view per category (UM, UMM, UU, and URBAN over all), as KITTI's server
ranks methods; with --save-images, a BEV picture per image in bev/.

    python evaluate.py --model runs/20261121-143000 --data-dir data --split val --save-images
"""
import os
import sys

from roadseg import bev, cli, crf, drawing, evaluation, files, inference, zoo
from roadseg.data import reading


def default_output_dir(model, split, flip_tta=False, crf=False):
    """MODEL/eval-SPLIT for a model folder, MODEL-without-extension-eval-SPLIT for a file;
    with a -flip suffix for --flip-tta and -crf for --crf, so no evaluation replaces another."""
    name = f'eval-{split}' + ('-flip' if flip_tta else '') + ('-crf' if crf else '')
    if os.path.isdir(model):
        return os.path.join(model, name)
    return f'{os.path.splitext(model)[0]}-{name}'


def main(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True,
                        help='a run folder, a SavedModel folder, a frozen graph .pb, a .tflite, '
                             f'or a shipped model by name: {", ".join(zoo.SHIPPED)}')
    parser.add_argument('--data-dir', required=True,
                        help='the data set folder, in the layout the model was trained on')
    parser.add_argument('--split', choices=('val', 'seen', 'all'), default='val',
                        help="the run's validation images (under --val-groups, its held-out "
                             "groups), the unseen images of its training groups (seen), or "
                             "every labelled image")
    parser.add_argument('--output-dir', help='where metrics.json (and images) go '
                                             '(default: MODEL/eval-SPLIT, MODEL-eval-SPLIT '
                                             'beside a model file)')
    parser.add_argument('--save-images', action='store_true',
                        help='also write overlays and road-probability PNGs')
    parser.add_argument('--flip-tta', action='store_true',
                        help='average each prediction with that of the mirrored image '
                             '(test-time augmentation, twice the inference time)')
    parser.add_argument('--bev', action='store_true',
                        help="also score in KITTI's bird's-eye view, as its server ranks "
                             "(images with a calib/ file; with --save-images, BEV pictures)")
    crf.add_flag(parser)
    args = parser.parse_args(argv)
    name, args.model = args.model, zoo.resolve(args.model)
    print(zoo.describe(name, args.model), flush=True)
    output_dir = args.output_dir or default_output_dir(
        os.path.join('runs', name) if name in zoo.SHIPPED else args.model, args.split,
        args.flip_tta, bool(args.crf))
    files.check_writable(output_dir, '--output-dir')
    files.check_outputs([(os.path.join(output_dir, 'metrics.json'), 'the metrics')],
                        folders=[output_dir])
    with inference.load_model(args.model, flip=args.flip_tta,
                              refine=crf.refiner(args.crf)) as model:
        dataset, pairs = evaluation.evaluation_data(args.model, args.data_dir, model.info,
                                                    args.split)
        bev_evaluation = bev.evaluation_for([image for image, _ in pairs], model.num_classes,
                                            model.info.kitti_label, '--bev') if args.bev else None
        results = evaluation.evaluate(model, reading.load_samples(pairs, dataset.read_label),
                                      output_dir if args.save_images else None,
                                      drawing.overlay_colors(dataset.classes.colors),
                                      model.info.kitti_label, bev_evaluation)
    results.update(model=os.path.abspath(args.model), split=args.split, flip_tta=args.flip_tta,
                   crf=args.crf and crf.read_parameters(args.crf), classes=dataset.classes.names)
    seen = zoo.seen_in_training(name, model.info.dataset)
    if seen:
        results['note'] = seen
    print(evaluation.format_table(results, dataset.classes.names))
    for note in (seen, bev_evaluation and bev_evaluation.note()):
        if note:
            print(note)
    files.write_json(os.path.join(output_dir, 'metrics.json'), results)
    print(f'metrics written to {os.path.join(output_dir, "metrics.json")}')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
