"""Segment images, folders, globs and videos with a trained model.

    python predict.py drive.mp4 'frames/*.png'        # the shipped road model, into runs/
    python predict.py --model runs/20261121-143000 drive.mp4 --output-dir out \\
        --overlay --mask --crop 120,-40

Every frame is resized to the model's training size, segmented, and the result resized back to
the frame's own size. Outputs, by flag (none given: overlays for images, an overlaid video for
videos): `--overlay` `<name>.png` (road in translucent green; with more classes every class in
its colour), `--mask` `<name>_mask.png` (class numbers), `--probability` 8-bit road probability
PNGs (KITTI's submission format, `um_000001` -> `um_road_000001.png`, else `<name>_prob.png`),
`--video` `<stem>_overlay.mp4` at the video's frame rate, `--gif` `<stem>_overlay.gif`. A video's
frames are named `<stem>_<frame number>`. Unreadable inputs are skipped and listed at the end.
`--kitti-submission DIR` writes KITTI's road benchmark submission for its testing images (each
with its calib/ file): the bird's-eye-view road probability maps in DIR/bev/, zipped into
DIR/kitti_road_bev.zip (what KITTI's server takes), and the perspective maps in DIR/perspective/.
--model takes a run folder, a SavedModel, a frozen graph (.pb), a TFLite model (.tflite), an
ONNX model (.onnx), or a shipped model's name (roadseg/shipped/, roadseg.zoo; camvid-road by
default). A TFLite model runs without importing TensorFlow, and an ONNX model too (on
onnxruntime: pip install 'roadseg[onnx]').
"""
import contextlib
import os
import sys
import time

from tqdm import tqdm

from roadseg import cli, crf, files, inference, media, metrics, zoo
from roadseg.errors import PartlyFailed, UserError


def parse_args(argv=None):
    parser = cli.ArgumentParser(description=__doc__.split('\n\n')[0])
    parser.add_argument('inputs', nargs='+', metavar='INPUT',
                        help='image or video files (.mp4 .avi .mov), folders or globs')
    parser.add_argument('--model', help='a run folder, a SavedModel folder, a frozen graph .pb, '
                                        'a .tflite, a .onnx, or a shipped model by name: '
                                        f'{", ".join(zoo.SHIPPED)} (default: {zoo.DEFAULT})')
    parser.add_argument('--output-dir', help='where the outputs are written (default: '
                                             'runs/predict-<time>)')
    for flag, what in (('overlay', '<name>.png: the classes drawn over the image'),
                       ('mask', '<name>_mask.png: class numbers'),
                       ('probability', '8-bit road-probability PNGs, KITTI\'s submission format'),
                       ('video', '<stem>_overlay.mp4 for each video, at its frame rate'),
                       ('gif', '<stem>_overlay.gif for each video')):
        parser.add_argument('--' + flag, action='store_true', help=what)
    parser.add_argument('--kitti-submission', metavar='DIR',
                        help="KITTI's road benchmark submission of the testing images: "
                             "bird's-eye-view road probability maps in DIR/bev/ and zipped in "
                             "DIR/kitti_road_bev.zip (KITTI's server takes the zip), and the "
                             "perspective maps in DIR/perspective/")
    parser.add_argument('--crop', type=cli.crop_arg, metavar='TOP,BOTTOM',
                        help='segment only these rows (e.g. 120,-40: without the sky and the '
                             'bonnet); the rest counts as not road')
    parser.add_argument('--threshold', type=float,
                        help='road where its probability is at least this (two-class models; '
                             'default 0.5)')
    parser.add_argument('--batch-size', type=int, default=8,
                        help='frames per model call (default: %(default)s)')
    parser.add_argument('--flip-tta', action='store_true',
                        help='average each prediction with that of the mirrored frame '
                             '(test-time augmentation, twice the inference time)')
    crf.add_flag(parser)
    args = parser.parse_args(argv)
    if args.batch_size < 1:
        parser.error('argument --batch-size: must be at least 1')
    if args.threshold is not None and not 0 < args.threshold <= 1:
        parser.error('argument --threshold: must be above 0 and at most 1')
    flags = args.overlay or args.mask or args.probability or args.video or args.gif
    if not args.output_dir and (flags or not args.kitti_submission):
        args.output_dir = os.path.join('runs', time.strftime('predict-%Y%m%d-%H%M%S'))
    return args


def wanted(args):
    """The outputs the flags ask for; without output flags, overlays for images and a video
    for videos (unless only submitting)."""
    default = not (args.overlay or args.mask or args.probability or args.video or args.gif) \
        and bool(args.output_dir)
    return media.Wanted(overlays=args.overlay, image_overlays=default, masks=args.mask,
                        probabilities=args.probability, kitti_submission=args.kitti_submission,
                        video=args.video or default, gif=args.gif, threshold=args.threshold)


def check_options(args, model):
    """Options that need a two-class model."""
    if metrics.is_road_model(model.num_classes):
        if args.threshold is None:
            args.threshold = inference.default_threshold(model.num_classes)
    elif args.probability or args.kitti_submission or args.threshold is not None:
        flag = '--probability' if args.probability else '--kitti-submission' \
            if args.kitti_submission else '--threshold'
        raise UserError(f'{flag}: for two-class (road) models; {model.path} has '
                        f'{model.num_classes} classes')


def main(argv=None):
    args = parse_args(argv)
    model_path = zoo.resolve(args.model)
    print(zoo.describe(args.model, model_path), flush=True)
    for folder, flag in ((args.output_dir, '--output-dir'),
                         (args.kitti_submission, '--kitti-submission')):
        if folder:
            files.check_writable(folder, flag)
    bad, outputs_wanted = {}, wanted(args)
    with inference.load_model(model_path, flip=args.flip_tta,
                              refine=crf.refiner(args.crf)) as model, \
            contextlib.ExitStack() as stack:
        check_options(args, model)
        sources = [media.Source(path) for path in media.input_files(args.inputs, bad)]
        if args.kitti_submission:
            media.check_submission(sources)
        folders = [folder for folder in (args.output_dir, args.kitti_submission) if folder]
        files.check_outputs(media.planned_outputs(sources, outputs_wanted, args.output_dir,
                                                  model.info),
                            [source.path for source in sources] + files.files_in(model_path),
                            folders)
        for folder in folders:
            stack.enter_context(files.output_folder(folder))
        start, count = time.perf_counter(), 0
        with media.Outputs(args.output_dir, outputs_wanted, model.info, bad) as outputs, \
                tqdm(total=sum(source.frame_estimate for source in sources), unit='frame',
                     desc='Segmenting', disable=None) as bar:
            for frame, probabilities in inference.segment_stream(
                    model, media.read_frames(sources, args.crop, bad), args.batch_size):
                outputs.write(frame, probabilities)
                count += 1
                bar.update()
        seconds = time.perf_counter() - start
    print(f'{count} frames in {seconds:.1f} s: {count / max(seconds, 1e-9):.1f} frames/s '
          f'(model {model.kind})' + (f'; outputs in {args.output_dir}' if args.output_dir
                                     else ''))
    if args.kitti_submission and not bad:
        path, counts = media.zip_submission(args.kitti_submission, sources,
                                            model.info.kitti_label)
        print(f'KITTI submission: {sum(counts.values())} bird\'s-eye-view maps ('
              f'{", ".join(f"{n} {c}" for c, n in sorted(counts.items()))}) in {path}; upload '
              f'that zip to KITTI\'s road benchmark')
    for message in bad.values():
        print(cli.one_line(f'skipped {message}'), file=sys.stderr)
    if bad and args.kitti_submission:
        print(f'--kitti-submission: no zip, as every test image needs its map'
              f'{media.remove_submission_zip(args.kitti_submission, model.info)}',
              file=sys.stderr)
    if bad:
        raise PartlyFailed(f'{len(bad)} input(s) failed (listed above); the others were '
                           f'processed')


if __name__ == '__main__':
    sys.exit(cli.main_guard(main))
