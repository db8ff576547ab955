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

The file exports share the fcn.json written beside them; the SavedModel holds its own. Each
export is loaded back and scored next to the original on labelled images (the run's validation
images, or --check-dir): the IoU difference (road IoU for two classes, mean IoU otherwise), the
largest probability difference and the share of pixels whose class agrees are printed and
written to agreement.json; an export outside its tolerance (roadseg.export.TOLERANCES) makes the
exit status 1.
"""
import argparse
import os
import sys

from roadseg import cli, evaluation, files, images, inference, metrics
from roadseg.errors import PartlyFailed, UserError

FILES = inference.EXPORT_FILES


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
    parser.add_argument('--formats', type=formats_arg, default=list(FILES),
                        help=f'comma-separated, of {",".join(FILES)} (default: all)')
    parser.add_argument('--check-dir', metavar='DATA_DIR',
                        help="labelled images to check the exports on, in the layout the model "
                             "was trained on (default: the run's validation images)")
    parser.add_argument('--calibration-dir', metavar='DIR',
                        help="images to calibrate the int8 model on (default: the run's "
                             "training images)")
    parser.add_argument('--calibration-images', type=int, default=images.CALIBRATION_IMAGES,
                        help='how many calibration images, at an even step '
                             '(default: %(default)s)')
    args = parser.parse_args(argv)
    if args.calibration_images < 1:
        parser.error('argument --calibration-images: must be at least 1')
    return args


def main(argv=None):
    args = parse_args(argv)
    from roadseg import export  # loads TensorFlow (seconds): only once the options are sound
    with inference.load_model(args.model) as original:
        if original.kind != 'savedmodel':
            raise UserError(f'--model {args.model}: a {original.kind} model; export from a run '
                            f'folder or the SavedModel main.py wrote')
        info, folder = original.info, inference.model_folder(args.model)
        output_dir = args.output_dir or os.path.join(os.path.dirname(os.path.abspath(folder)),
                                                     'export')
        files.check_writable(output_dir, '--output-dir')  # before the exports, which take minutes
        samples = export.check_samples(args.model, info, args.check_dir)
        calibration = export.calibration_images(args.model, info, args.calibration_dir,
                                                args.calibration_images) \
            if 'int8' in args.formats else ()
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
    files.write_json(os.path.join(output_dir, 'agreement.json'),
                     {'model': os.path.abspath(args.model), 'images': len(samples),
                      'metric': metric, 'original_iou': reference, 'exports': exports})
    print(f'exports and agreement.json written to {output_dir}')
    outside = [fmt for fmt, result in exports.items() if not result['within_tolerance']]
    if outside:
        raise PartlyFailed(f'{", ".join(outside)} disagree with the original beyond their '
                           f'tolerance (see agreement.json)')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
