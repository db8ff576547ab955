"""Export a trained model for deployment, and check every export against the original.

    python export.py --model runs/20261121-143000 [--output-dir DIR] [--formats frozen,int8]

Formats, written to --output-dir (default: RUN_DIR/export), each under a temporary name renamed
when complete:

| format | file | what it is |
| --- | --- | --- |
| savedmodel | savedmodel/1/ | TensorFlow Serving (the version folder its server loads): `serving_default` takes uint8 RGB images of any size, returns `probabilities` and the uint8 class map `classes` at that size |
| frozen | model.pb | GraphDef, variables folded to constants, dropout removed: `image` (float32 RGB 0..255 at the training size) in, `probabilities` out |
| tflite32, tflite16 | model_float32.tflite, model_float16.tflite | TFLite, float32 or float16 weights, one image at a time; transposed convolutions rewritten as sub-pixel convolutions (same results), which XNNPACK runs quantised too |
| int8 | model_int8.tflite | integer TFLite calibrated on training images: uint8 image in, its preprocessing (and --input-norm image's) in float, the network in int8, uint8 probabilities (scale 1/256) out |
| onnx | model.onnx | the frozen graph in ONNX (tf2onnx, opset 17), for onnxruntime and other ONNX runtimes: `image` (float32 RGB 0..255 at the training size, any batch) in, `probabilities` out; only when asked for, as it needs the onnx extra (pip install 'roadseg[onnx]') |

The file exports share the fcn.json written beside them; the SavedModel holds its own. Each
export is loaded back and scored next to the original on labelled images (the run's validation
images, or --check-dir): the IoU difference (road IoU for two classes, mean IoU otherwise), the
largest probability difference and the share of pixels whose class agrees are printed and
written to agreement.json; an export outside its tolerance (roadseg.export.TOLERANCES) makes the
exit status 1.
"""
import argparse
import contextlib
import os
import sys

from roadseg import cli, evaluation, files, images, inference, metrics, zoo
from roadseg.errors import PartlyFailed, UserError

FILES = inference.EXPORT_FILES
DEFAULT_FORMATS = [fmt for fmt in FILES if fmt != 'onnx']  # onnx needs an extra: when asked


def formats_arg(text):
    """Parse a comma-separated list of FILES' keys."""
    formats = text.split(',')
    unknown = [f for f in formats if f not in FILES]
    if unknown or not text:
        raise argparse.ArgumentTypeError(f'{unknown[0] if unknown else text!r} is not a format; '
                                         f'choose from {",".join(FILES)}')
    return formats


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('--model', required=True,
                        help="a run folder or main.py's SavedModel folder")
    parser.add_argument('--output-dir', help='where the exports go (default: RUN_DIR/export)')
    parser.add_argument('--formats', type=formats_arg,
                        help=f'comma-separated, of {",".join(FILES)} (default: all but onnx, '
                             f'which needs pip install \'roadseg[onnx]\')')
    parser.add_argument('--check-dir', metavar='DATA_DIR',
                        help="labelled images to check the exports on, in the layout the model "
                             "was trained on (default: the run's validation images, or its "
                             "training images when it held none out)")
    parser.add_argument('--calibration-dir', metavar='DIR',
                        help="images to calibrate the int8 model on (default: the run's "
                             "training images)")
    parser.add_argument('--calibration-images', type=int, default=images.CALIBRATION_IMAGES,
                        help='how many calibration images, at an even step '
                             '(default: %(default)s)')
    parser.add_argument('--ship', choices=sorted(zoo.SHIPPED), metavar='NAME',
                        help='rebuild the shipped model NAME in roadseg/shipped/ from this run: its int8 '
                             'file, replaced only when within tolerance, and its model card '
                             f'(roadseg/shipped/README.md); NAME is one of {", ".join(zoo.SHIPPED)}')
    args = parser.parse_args(argv)
    if args.calibration_images < 1:
        parser.error('argument --calibration-images: must be at least 1')
    if args.ship and (args.output_dir or args.formats):
        parser.error(f'--ship {args.ship} writes the int8 file into roadseg/shipped/{args.ship}/: '
                     f'leave out --output-dir and --formats')
    args.formats = ['int8'] if args.ship else args.formats or DEFAULT_FORMATS
    return args


def main(argv=None):
    args = parse_args(argv)
    from roadseg import export  # loads TensorFlow (seconds): only once the options are sound
    if 'onnx' in args.formats:  # a missing package stops it before any work (cli.main_guard)
        cli.require(*export.ONNX_PACKAGES)
    with inference.load_model(args.model) as original:
        if original.kind != 'savedmodel':
            raise UserError(f'--model {args.model}: a {original.kind} model; export from a run '
                            f'folder or the SavedModel main.py wrote')
        info, folder = original.info, inference.model_folder(args.model)
        run_dir = os.path.dirname(os.path.abspath(folder))  # the run, when `folder` is its model/
        output_dir = zoo.folder_of(args.ship) if args.ship else args.output_dir or \
            os.path.join(run_dir, 'export')
        files.check_writable(output_dir, '--ship' if args.ship else '--output-dir')  # first
        if not args.ship:
            check_outputs(export, args.formats, output_dir, folder)
        if args.ship and not os.path.isfile(os.path.join(run_dir, 'split.json')):
            raise UserError(f'--ship {args.ship}: --model {args.model} is not a run folder; '
                            f'a shipped model is exported from the run that trained it')
        samples = export.check_samples(args.model, info, args.check_dir)
        calibration = export.calibration_images(args.model, info, args.calibration_dir,
                                                args.calibration_images) \
            if 'int8' in args.formats else ()
        with contextlib.ExitStack() as stack:
            if args.ship:  # the shipped folder is replaced only by a model within tolerance
                output_dir = stack.enter_context(files.atomic_path(output_dir,
                                                                      replace_folder=True))
                os.makedirs(output_dir)
            exports, reference = export_and_check(export, args, original, folder, output_dir,
                                                  samples, calibration)
            if args.ship:
                ship(args, run_dir, original, exports['int8'], reference, len(samples),
                     calibration)
    if args.ship:
        zoo.write_card()
        print(f'shipped {args.ship}: {zoo.path(args.ship)}; its card is in '
              f'{os.path.join(zoo.DIR, "README.md")}')


def check_outputs(export, formats, output_dir, folder):
    """Stop before any work unless the exports of `formats` may be written to `output_dir`
    (files.check_outputs): a SavedModel folder is replaced only when an earlier export wrote
    it, as its version folder's manifest shows."""
    paths = [os.path.join(output_dir, export.FILES[fmt]) for fmt in formats]
    earlier = [path for path in paths if os.path.isfile(
        os.path.join(path, export.SERVING_VERSION, files.MANIFEST))]
    files.check_outputs([(path, f'the {fmt} export') for fmt, path in zip(formats, paths)],
                        files.files_in(folder), [output_dir], replaceable=earlier)


def export_and_check(export, args, original, folder, output_dir, samples, calibration):
    """Write the exports of args.formats to `output_dir`, check each against `original` on
    `samples`, print and record the agreement: ({format: agreement}, the original's figure). An export outside its tolerance stops with PartlyFailed, after the record."""
    info = original.info
    paths = export.write_exports(folder, info, output_dir, args.formats, calibration)
    reference = evaluation.key_metric(evaluation.evaluate(original, samples))
    metric = metrics.key_metric_name(original.num_classes)
    print(f'{"original":<10} {metric} {reference:.4f} on {len(samples)} images')
    exports = {fmt: export.check(fmt, path, original, samples, reference)
               for fmt, path in paths.items()}
    for fmt, result in exports.items():
        print(f'{fmt:<10} {metric} {result["iou"]:.4f} ({result["iou_difference"]:+.4f}), '
              f'max probability difference {result["max_probability_difference"]:.2g}, '
              f'classes agree on {100 * result["class_agreement"]:.2f}% of pixels: '
              f'{"within" if result["within_tolerance"] else "OUTSIDE"} tolerance')
    if not args.ship:  # a shipped model's card holds its agreement
        files.write_json(os.path.join(output_dir, 'agreement.json'),
                         {'model': os.path.abspath(args.model), 'images': len(samples),
                          'metric': metric, 'original_iou': reference, 'exports': exports})
        print(f'exports and agreement.json written to {output_dir}')
    outside = [fmt for fmt, result in exports.items() if not result['within_tolerance']]
    if outside:
        raise PartlyFailed(f'{", ".join(outside)} disagree with the original beyond their '
                           f'tolerance' + ('; nothing shipped' if args.ship else
                                           ' (see agreement.json)'))
    return exports, reference


def ship(args, run_dir, original, result, reference, images_checked, calibration):
    """Write the shipped model's card.json beside its int8 file: the run, its data, its
    cross-validated quality, its score on the data set's validation images, the int8 file's
    agreement and its speed here."""
    path = result['path']
    with inference.load_model(path) as shipped:
        milliseconds = zoo.speed(shipped, calibration[0])
        validation = zoo.validation_score(shipped, path, args.check_dir)
    checked = {'result': result, 'original': reference, 'images': images_checked,
               'source': args.check_dir or ("the run's validation images" if
                                            evaluation.default_split(run_dir) == 'val' else
                                            "the run's training images (it held none out)")}
    card = zoo.card(args.ship, run_dir, original.info, checked, milliseconds, path, validation)
    files.write_json(os.path.join(os.path.dirname(path), zoo.CARD), card)


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
