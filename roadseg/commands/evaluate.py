"""Evaluate a trained model on labelled images of the data set it was trained on, or of another.

Prints per-class accuracy and IoU, pixel accuracy, mean and frequency-weighted IoU, for two
classes the KITTI road devkit's MaxF/AP figures, and the inference time per image; writes
metrics.json, the confusion matrix as confusion.csv and confusion.png and, with --save-images,
overlays and (two classes) 8-bit road-probability PNGs, KITTI's submission format. With
--dataset, the labels are another data set's, its classes matched to the model's by name. With
--bev (KITTI, images with calib/ files), also the devkit's figures in the bird's-eye view per
category (UM, UMM, UU, and URBAN over all), as KITTI's server ranks methods; with
--save-images, a BEV picture per image in bev/.

    python evaluate.py --model runs/20261121-143000 --data-dir data --split val --save-images
"""
import os
import sys

from roadseg import bev, cli, crf, drawing, evaluation, files, inference, zoo
from roadseg.data import layouts, reading


def default_output_dir(model, split, flip_tta=False, crf=False, dataset=None):
    """MODEL/eval-SPLIT for a model folder, MODEL-without-extension-eval-SPLIT for a file,
    eval-DATASET[-SPLIT] with a --dataset; with a -flip suffix for --flip-tta and -crf for
    --crf, so no evaluation replaces another."""
    name = '-'.join(['eval', *filter(None, (dataset, split))]) + ('-flip' if flip_tta else '') \
        + ('-crf' if crf else '')
    if os.path.isdir(model):
        return os.path.join(model, name)
    return f'{os.path.splitext(model)[0]}-{name}'


DATASET_HELP = (
    "score on the labels of this data set layout in --data-dir (default: the model's own, from "
    "its fcn.json). Its classes are matched to the model's by name, case aside (KITTI's road "
    "is camvid-road's road); the rest of its classes count as the model's remaining classes "
    "(a road model's other, not road), merged as one. Where the model has no class left for "
    "them, they are void and scored in neither figure, and the run names them; a data set "
    "sharing no class with the model stops with one line. --split val is then the data set's "
    "own validation images (CamVid's val/), --split all every labelled image. The model's own "
    "data set is scored as without --dataset")


def parser():
    """evaluate.py's flags."""
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True,
                        help='a run folder, a SavedModel folder, a frozen graph .pb, a .tflite, '
                             f'a .onnx, or a shipped model by name: {", ".join(zoo.SHIPPED)}')
    parser.add_argument('--data-dir', required=True,
                        help='the data set folder, in the layout the model was trained on, or '
                             "in --dataset's")
    parser.add_argument('--dataset', choices=sorted(layouts.READERS), help=DATASET_HELP)
    parser.add_argument('--label', choices=layouts.LABELS,
                        help="KITTI's ground truth to score on (default: the model's, road); "
                             "the lane truth's classes are lane and not lane, so only a lane "
                             "model is scored on it")
    parser.add_argument('--split', choices=('val', 'seen', 'all'),
                        help="the run's validation images (under --val-groups, its held-out "
                             "groups), the unseen images of its training groups (seen), or "
                             "every labelled image (default: val, or all for a run that held "
                             "none out, saying so, and for a --dataset with no validation "
                             "images)")
    parser.add_argument('--output-dir', help='where metrics.json, confusion.csv and '
                                             'confusion.png (and images) go '
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
    return parser


OUTPUTS = (('metrics.json', 'the metrics'), ('confusion.csv', 'the confusion matrix'),
           ('confusion.png', 'the confusion matrix picture'))


def main(argv=None):
    args = parser().parse_args(argv)
    name, args.model = args.model, zoo.resolve(args.model)
    print(zoo.describe(name, args.model), flush=True)
    if not args.dataset:  # another data set's default split waits for its listing
        args.split = args.split or evaluation.default_split(args.model)
    output_dir = args.output_dir or default_output_dir(
        os.path.join('runs', name) if name in zoo.SHIPPED else args.model, args.split,
        args.flip_tta, bool(args.crf), args.dataset)
    files.check_writable(output_dir, '--output-dir')
    files.check_outputs([(os.path.join(output_dir, file), what) for file, what in OUTPUTS],
                        folders=[output_dir])
    with inference.load_model(args.model, flip=args.flip_tta,
                              refine=crf.refiner(args.crf)) as model:
        dataset, pairs, match, args.split = evaluation.scoring_data(
            args.model, args.data_dir, model.info, args.split, args.dataset, args.label, name)
        if match:
            print(cli.one_line(match.describe(f'--dataset {dataset.name}')))
        results, notes = score(args, name, model, dataset, pairs, match, output_dir)
    print(evaluation.format_table(results, results['classes']))
    for note in notes:
        print(note)
    write_outputs(output_dir, results)


def score(args, name, model, dataset, pairs, match, output_dir):
    """(the results of `model` on `pairs` of `dataset`, as metrics.json holds them, the notes
    to print after them)."""
    colors = model.info.class_colors if match else dataset.classes.colors
    bev_evaluation = bev.evaluation_for([image for image, _ in pairs],
                                        len(match.names) if match else model.num_classes,
                                        args.label or model.info.kitti_label,
                                        '--bev') if args.bev else None
    results = evaluation.evaluate(model, reading.load_samples(pairs, dataset.read_label),
                                  output_dir if args.save_images else None,
                                  drawing.overlay_colors(colors),
                                  args.label or model.info.kitti_label, bev_evaluation, match)
    results.update(model=os.path.abspath(args.model), split=args.split, flip_tta=args.flip_tta,
                   crf=args.crf and crf.read_parameters(args.crf),
                   classes=list(match.names) if match else dataset.classes.names)
    if match:
        results.update(dataset=dataset.name, data_classes=match.record())
    seen = None if match else (zoo.seen_in_training(name, model.info.dataset) or
                               evaluation.trained_on(args.model, pairs))
    if seen:
        results['note'] = seen
    return results, [note for note in (seen, bev_evaluation and bev_evaluation.note()) if note]


def write_outputs(output_dir, results):
    """metrics.json, and the confusion matrix as confusion.csv and confusion.png."""
    files.write_json(os.path.join(output_dir, 'metrics.json'), results)
    files.write_bytes(os.path.join(output_dir, 'confusion.csv'),
                      evaluation.confusion_csv(results['confusion'], results['classes']).encode())
    files.write_png(os.path.join(output_dir, 'confusion.png'),
                    drawing.confusion_picture(results['confusion'], results['classes']))
    print(f'metrics written to {os.path.join(output_dir, "metrics.json")}, the confusion matrix '
          f'(rows true, columns predicted) to confusion.csv and confusion.png')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
