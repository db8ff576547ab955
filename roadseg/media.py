"""predict.py's inputs and outputs: images, folders, globs and videos read frame by frame, and
the overlays, masks, probability PNGs, videos and GIFs written for them, each atomically; and
KITTI's submission: bird's-eye-view road probability maps, zipped as its server takes them."""
import collections
import contextlib
import dataclasses
import functools
import glob
import os
import zipfile

import imageio.v2 as iio2
import imageio.v3 as iio

from roadseg import bev, drawing, files, inference, metrics
from roadseg.data import kitti_names
from roadseg.data.layouts import IMAGE_EXTENSIONS
from roadseg.errors import UserError
from roadseg.images import read_rgb

VIDEO_EXTENSIONS = ('.mp4', '.avi', '.mov')


@dataclasses.dataclass
class Source:
    """One input file: an image, or a video whose frame rate is known once it is opened."""
    path: str
    fps: float = None

    @property
    def stem(self):
        return os.path.splitext(os.path.basename(self.path))[0]

    @property
    def video(self):
        return self.path.lower().endswith(VIDEO_EXTENSIONS)

    def frame_name(self, index):
        """What the outputs of frame `index` are named after: the image's stem, or the video's
        stem and the frame number."""
        return f'{self.stem}_{index:06d}' if self.video else self.stem

    @functools.cached_property
    def frame_estimate(self):
        """How many frames it will give, for the progress bar and the outputs planned: a
        video's duration times its frame rate (0 when unreadable: that is reported when it is
        read), 1 for an image. Read once: probing a video starts a process."""
        if not self.video:
            return 1
        try:
            meta = iio.immeta(self.path, plugin='FFMPEG')
            return round(meta['duration'] * meta['fps'])
        except (OSError, RuntimeError, ValueError, KeyError, TypeError):
            return 0


Frame = collections.namedtuple('Frame', 'source index image rows')  # rows: the crop, top..bottom


def _media(path):
    """Whether `path` is a file with an image or video extension."""
    return os.path.isfile(path) and path.lower().endswith(IMAGE_EXTENSIONS + VIDEO_EXTENSIONS)


def input_files(inputs, bad):
    """The files the INPUT arguments name: a file as given, a folder's images and videos
    (sorted), a glob's matching images and videos (sorted). An argument naming none of them is
    recorded in `bad` ({argument: message})."""
    paths = {}  # ordered, without repeats
    for item in inputs:
        if os.path.isdir(item):
            found = sorted(filter(_media, glob.glob(os.path.join(glob.escape(item), '*'))))
            why = 'no images or videos in this folder'
        elif os.path.isfile(item):
            found, why = [item], None
        else:
            found = sorted(filter(_media, glob.glob(item)))
            why = 'no image or video matches this pattern' if glob.has_magic(item) else \
                'no such file or folder'
        if not found:
            bad[item] = f'{item}: {why}'
        paths.update(dict.fromkeys(found))
    return list(paths)


def read_source(source):
    """Yield the RGB frames of an image (one) or a video, read frame by frame."""
    if source.video:
        yield from read_video(source)
    elif source.path.lower().endswith(IMAGE_EXTENSIONS):
        yield read_rgb(source.path)
    else:
        raise UserError(f'{source.path}: unsupported file type; expected an image '
                        f'({" ".join(IMAGE_EXTENSIONS)}) or a video '
                        f'({" ".join(VIDEO_EXTENSIONS)})')


def read_video(source):
    """Yield a video's frames through imageio's ffmpeg plugin, setting `source.fps`."""
    def unreadable(e, after):
        return UserError(f'{source.path}: cannot read video frames{after} '
                         f'({str(e).splitlines()[0]}); is it damaged or without video?')
    try:
        reader = iio2.get_reader(source.path, 'ffmpeg')
        source.fps = float(reader.get_meta_data().get('fps') or 25)
    except (OSError, RuntimeError, ValueError) as e:
        raise unreadable(e, '') from None
    count = 0
    with reader:
        try:
            for frame in reader:
                yield frame
                count += 1
        except (OSError, RuntimeError, ValueError) as e:
            raise unreadable(e, f' after frame {count}') from None
    if count == 0:
        raise UserError(f'{source.path}: a video without frames')


def crop_rows(crop, height, path):
    """(top, bottom) rows of an image of `height` rows that --crop keeps (all without it)."""
    if crop is None:
        return 0, height
    top, bottom, _ = slice(*crop).indices(height)
    if bottom <= top:
        raise UserError(f'{path}: --crop {crop[0]},{crop[1]} leaves none of its {height} '
                        f'rows')
    return top, bottom


def read_frames(sources, crop, bad):
    """Yield a Frame for every frame of every source; a source that cannot be read (or not to
    the end) is recorded in `bad` and the next one read."""
    for source in sources:
        try:
            for index, image in enumerate(read_source(source)):
                yield Frame(source, index, image, crop_rows(crop, image.shape[0], source.path))
        except UserError as e:
            bad[source.path] = str(e)


def open_video(path, fps, shape):
    """An H.264 MP4 writer. yuv420p, which every player plays, needs even sizes; odd-sized
    frames (KITTI's are 375 rows) are written as yuv444p, so the video keeps the frames' size.
    x264's veryfast preset: its default (medium) took 138 ms a KITTI frame here, more than the
    model, decoding and drawing together; veryfast takes 30 ms for a file no larger."""
    even = shape[0] % 2 == 0 and shape[1] % 2 == 0
    return iio2.get_writer(path, format='FFMPEG', fps=fps, codec='libx264',
                           pixelformat='yuv420p' if even else 'yuv444p', macro_block_size=1,
                           ffmpeg_log_level='error', output_params=['-preset', 'veryfast'])


def open_gif(path, fps):
    """A looping GIF writer (Pillow keeps the frames until it closes: for short clips)."""
    return iio2.get_writer(path, extension='.gif', mode='I', duration=1000 / fps, loop=0)


class VideoFailed(Exception):
    """Raised inside a video's writers to drop their half-written files."""


@dataclasses.dataclass(frozen=True)
class Wanted:
    """What Outputs writes: overlay PNGs of every frame (`overlays`) or of still images only
    (`image_overlays`), class-map `masks`, road-`probabilities` PNGs, KITTI's submission maps
    into the folder `kitti_submission`, and an overlaid MP4 (`video`) and GIF (`gif`) per
    video; two-class models draw road where its probability passes `threshold`."""
    overlays: bool = False
    image_overlays: bool = False
    masks: bool = False
    probabilities: bool = False
    kitti_submission: str = None
    video: bool = False
    gif: bool = False
    threshold: float = None


class Outputs:
    """Writes what `wanted` (a Wanted) asks for at each frame's own size: overlays, masks and
    probability PNGs per frame; an overlaid MP4 and GIF per video. Every file is written under a
    temporary name and renamed when complete; a video that fails part-way leaves no video
    file."""

    def __init__(self, output_dir, wanted, info, bad):
        self.output_dir, self.wanted, self.bad = output_dir, wanted, bad
        self.colors = drawing.overlay_colors(info.class_colors)
        self.label = info.kitti_label
        self.source, self.writers, self.stack, self.written = None, [], None, set()
        if output_dir and has_legend(info):  # many classes: which colour is which
            drawing.write_legend(self.path('legend.png'), info.class_names, self.colors)

    def write(self, frame, probabilities):
        if frame.source is not self.source:
            self.finish()
            self.source = frame.source
        wanted = self.wanted
        classes = inference.classes_of(probabilities, wanted.threshold)
        overlay = drawing.overlay(frame.image, classes, self.colors)
        name, video = frame.source.frame_name(frame.index), frame.source.video
        names = frame_names(wanted, name, video, self.label)
        if 'overlay' in names:
            files.write_png(self.path(names['overlay']), overlay)
        if 'mask' in names:
            files.write_png(self.path(names['mask']), classes)
        if 'probability' in names:
            files.write_png(self.path(names['probability']),
                            metrics.quantize(probabilities[..., 1]))
        if wanted.kitti_submission:
            write_submission_maps(wanted.kitti_submission, frame.source.path,
                                  kitti_names.probability_name(name, self.label),
                                  metrics.quantize(probabilities[..., 1]))
        if video and (wanted.video or wanted.gif):
            if self.stack is None:
                self.open_writers(frame.source, overlay.shape)
            for writer in self.writers:
                writer.append_data(overlay)

    def path(self, name):
        """Where the output `name` goes; a name written twice in one run (a video longer than
        planned_outputs expected, beside an image of its frames' names) stops the run."""
        if name in self.written:
            raise UserError(f'{os.path.join(self.output_dir, name)}: two outputs of this run '
                            f'have this name; rename the inputs or run them separately')
        self.written.add(name)
        return os.path.join(self.output_dir, name)

    def open_writers(self, source, shape):
        self.stack, self.writers = contextlib.ExitStack(), []
        names = video_names(self.wanted, source.stem)
        if 'video' in names:
            self.add_writer(names['video'], lambda path: open_video(path, source.fps, shape))
        if 'gif' in names:
            self.add_writer(names['gif'], lambda path: open_gif(path, source.fps))

    def add_writer(self, name, opener):
        """A writer opened by `opener` on a temporary name, renamed to `name` by finish()."""
        tmp = self.stack.enter_context(files.atomic_path(self.path(name)))
        writer = opener(tmp)
        self.stack.callback(writer.close)
        self.writers.append(writer)

    def finish(self, failed=False):
        """Close the current video's writers: their files are renamed into place when the video
        was read to the end, dropped when it failed."""
        stack, self.stack, self.writers = self.stack, None, []
        if stack is None:
            return
        with contextlib.suppress(VideoFailed), stack:
            if failed or self.source.path in self.bad:
                raise VideoFailed

    def __enter__(self):
        return self

    def __exit__(self, exc_type, *_):
        self.finish(failed=exc_type is not None)


def has_legend(info):
    """Whether a model's outputs come with legend.png: more than two classes to tell apart."""
    return len(info.class_colors) > 2


def frame_names(wanted, name, video, label):
    """The file names of the outputs that `wanted` asks for of the frame `name`, by kind."""
    names = {}
    if wanted.overlays or (wanted.image_overlays and not video):
        names['overlay'] = name + '.png'
    if wanted.masks:
        names['mask'] = name + '_mask.png'
    if wanted.probabilities:
        names['probability'] = kitti_names.probability_name(name, label)
    return names


def video_names(wanted, stem):
    """The file names of the overlaid video and GIF that `wanted` asks for of a video."""
    return {kind: stem + suffix for kind, suffix, asked in (
        ('video', '_overlay.mp4', wanted.video), ('gif', '_overlay.gif', wanted.gif)) if asked}


def planned_outputs(sources, wanted, output_dir, info):
    """Every (path, what writes it) that Outputs and the submission will write for `sources`,
    a video's frames counted by its frame_estimate: what files.check_outputs checks before any
    work."""
    label, planned = info.kitti_label, []
    if output_dir and has_legend(info):
        planned.append((os.path.join(output_dir, 'legend.png'), 'the legend'))
    for source in sources:
        for index in range(max(1, source.frame_estimate)):
            name = source.frame_name(index)
            where = f'frame {index} of {source.path}' if source.video else source.path
            planned += [(os.path.join(output_dir, file), f'the {kind} of {where}')
                        for kind, file in frame_names(wanted, name, source.video, label).items()]
            if wanted.kitti_submission and not source.video:
                map_name = kitti_names.probability_name(name, label)
                planned += [(os.path.join(wanted.kitti_submission, view, map_name),
                             f'the {view} map of {source.path}')
                            for view in ('perspective', 'bev')]
        if source.video:
            planned += [(os.path.join(output_dir, file), f'the {kind} of {source.path}')
                        for kind, file in video_names(wanted, source.stem).items()]
    if wanted.kitti_submission:
        planned.append((submission_zip(wanted.kitti_submission, label), 'the submission zip'))
    return planned


# ----------------------------------------------------------------------------------------------
# KITTI's submission
# ----------------------------------------------------------------------------------------------

def check_submission(sources):
    """Stop before any work when an input cannot be submitted: a video, a name that is not
    KITTI's (`um_000000`), or an image without a readable calibration (calib/ beside image_2/)."""
    problems = {}
    for source in sources:
        if source.video:
            problems.setdefault('videos', []).append(source.path)
        elif not kitti_names.is_image_name(source.stem):
            problems.setdefault("names that are not KITTI's (um_000000.png)", []).append(
                source.path)
        elif not os.path.isfile(bev.calibration_path(source.path)):
            problems.setdefault('no calibration file', []).append(source.path)
        else:  # a calibration that will not do stops the run now, not at that image
            path = bev.calibration_path(source.path)
            bev.road_homography(bev.read_calibration(path), path)
    for what, paths in problems.items():
        raise UserError(f'--kitti-submission: {len(paths)} input(s) with {what}, e.g. '
                        f'{paths[0]}; it takes KITTI\'s testing images, each with its '
                        f'calib/<name>.txt beside image_2/')


def write_submission_maps(folder, image_path, name, probability):
    """The perspective road probability and its bird's-eye view, as `name` in `folder`'s
    perspective/ and bev/."""
    files.write_png(os.path.join(folder, 'perspective', name), probability)
    warp = bev.warp_for(image_path, probability.shape)
    files.write_png(os.path.join(folder, 'bev', name), warp.to_bev(probability))


def submission_zip(folder, label):
    """Where zip_submission writes the zip."""
    return os.path.join(folder, f'kitti_{label}_bev.zip')


def remove_submission_zip(folder, info):
    """Remove an earlier run's zip, which a failed run must not leave to be uploaded; says so
    (an empty string when there was none)."""
    path = submission_zip(folder, info.kitti_label)
    if not os.path.isfile(path):
        return ''
    os.remove(path)
    return f' (the earlier {path} was removed)'


def zip_submission(folder, sources, label):
    """Zip the BEV maps of every input, at the zip's root as KITTI's server takes them, into
    `folder`/kitti_<label>_bev.zip after checking that every input has its map; returns the zip's
    path and the count per category."""
    names = [kitti_names.probability_name(source.stem, label) for source in sources]
    missing = [name for name in names if not os.path.isfile(os.path.join(folder, 'bev', name))]
    if missing:
        raise UserError(f'--kitti-submission: {len(missing)} of {len(names)} test images have no '
                        f'BEV map (e.g. {missing[0]}); the zip was not written')
    path = submission_zip(folder, label)
    with files.atomic_path(path) as tmp, zipfile.ZipFile(tmp, 'w', zipfile.ZIP_DEFLATED) as z:
        for name in names:
            z.write(os.path.join(folder, 'bev', name), name)
    with zipfile.ZipFile(path) as z:
        if sorted(z.namelist()) != sorted(names):
            raise UserError(f'{path}: does not hold exactly the {len(names)} BEV maps')
    return path, dict(collections.Counter(bev.category(source.path) for source in sources))
