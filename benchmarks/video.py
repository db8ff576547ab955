"""benchmark.py --video: predict.py on a video of KITTI-sized frames, decoding and encoding
included, and the share of each stage of its work: decoding, resizing to the model's size, the
model, resizing back, drawing and encoding, each timed alone over every frame in this process.
No TensorFlow is imported for a TFLite model.
"""
import os
import re
import subprocess
import sys
import time

import numpy as np

from roadseg import drawing, images, inference, media, metrics, streams, zoo
from roadseg.data.layouts import IMAGE_EXTENSIONS
from roadseg.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds predict.py
FRAMES_PER_SECOND = re.compile(r'(\d+) frames in ([0-9.]+) s: ([0-9.]+) frames/s')
FRAMES = 100
STAGES = ('decode', 'resize in', 'model', 'resize back', 'draw', 'encode')


def predict_rate(model, inputs, output_dir, *flags):
    """predict.py's own figures on `inputs`: {frames, seconds, frames_per_s}."""
    done = subprocess.run([sys.executable, os.path.join(ROOT, 'predict.py'), '--model', model,
                           inputs, '--output-dir', output_dir, *flags],
                          capture_output=True, text=True, cwd=ROOT)
    found = FRAMES_PER_SECOND.search(done.stdout)
    if done.returncode or not found:
        raise UserError(f'predict.py --model {model} {inputs} failed: '
                        f'{done.stderr.strip()[-300:]}')
    return {'frames': int(found[1]), 'seconds': float(found[2]),
            'frames_per_s': float(found[3])}


def make_video(frames_dir, path, count):
    """An MP4 of `count` frames looping over the images in `frames_dir` (each resized to the
    first one's size), at 10 frames per second; returns the frame size."""
    paths = [p for p in media.input_files([frames_dir], {})
             if p.lower().endswith(IMAGE_EXTENSIONS)]
    if not paths:
        raise UserError(f'--video-frames {frames_dir}: no images there')
    frames = [images.read_rgb(p) for p in paths]
    size = frames[0].shape[:2]
    with media.open_video(path, 10, size) as writer:
        for i in range(count):
            writer.append_data(images.resize_image(frames[i % len(frames)], size))
    return list(size)


def timed(work):
    """`work()`'s result and its seconds."""
    start = time.perf_counter()
    result = work()
    return result, time.perf_counter() - start


def stage_times(model_path, video, folder, batch_size=8):
    """Seconds per frame of each of STAGES, each run alone over the whole video, in the order
    predict.py runs them."""
    source = media.Source(video)
    frames, decode = timed(lambda: list(media.read_video(source)))
    rows = (0, frames[0].shape[0])
    with inference.load_model(model_path) as model:
        inputs, resize_in = timed(lambda: [inference.model_input(f, rows, model.image_shape)
                                           for f in frames])
        model(np.stack(inputs[:1]))  # warm-up
        outputs, run = timed(lambda: [p for batch in streams.batched(inputs, batch_size)
                                      for p in model(np.stack(batch))])
        full, resize_back = timed(lambda: [inference.at_image_size(model, f, p, rows)
                                           for f, p in zip(frames, outputs)])
        threshold = 0.5 if metrics.is_road_model(model.num_classes) else None
        colors = drawing.overlay_colors(model.info.class_colors)
        drawn, draw = timed(lambda: [drawing.overlay(f, inference.classes_of(p, threshold),
                                                       colors) for f, p in zip(frames, full)])

    def encode():
        with media.open_video(os.path.join(folder, 'encoded.mp4'), source.fps,
                              drawn[0].shape) as writer:
            for frame in drawn:
                writer.append_data(frame)
    _, write = timed(encode)
    seconds = (decode, resize_in, run, resize_back, draw, write)
    return {stage: s / len(frames) for stage, s in zip(STAGES, seconds)}


def measure(model, frames_dir, folder):
    """predict.py --video on a FRAMES-frame video of `frames_dir`'s images with `model` (a
    path or a shipped name), and its stages' shares."""
    path = zoo.resolve(model)
    video = os.path.join(folder, 'frames.mp4')
    size = make_video(frames_dir, video, FRAMES)
    print(f'predict.py --video on {FRAMES} frames of {size[1]}x{size[0]} ...', flush=True)
    result = predict_rate(path, video, os.path.join(folder, 'video'), '--video')
    print('timing each stage alone ...', flush=True)
    stages = stage_time_shares(stage_times(path, video, folder))
    return {'model': path, 'frame_size': size, **result, 'stages': stages}


def stage_time_shares(per_frame):
    """{stage: {ms_per_frame, share}}, the share of the stages' sum."""
    total = sum(per_frame.values())
    return {stage: {'ms_per_frame': s * 1e3, 'share': s / total} for stage, s in
            per_frame.items()}


def print_video(video):
    """The video figures: frames per second and each stage's time and share."""
    in_series = sum(s['ms_per_frame'] for s in video['stages'].values())
    print(f'\n{video["model"]}: predict.py --video, {video["frames"]} frames of '
          f'{video["frame_size"][1]}x{video["frame_size"][0]}, decoding and encoding included: '
          f'{video["frames_per_s"]:.1f} frames/s (target >= 50); the stages one after the '
          f'other would give {1e3 / in_series:.1f}')
    for stage, s in video['stages'].items():
        print(f'  {stage:<12} {s["ms_per_frame"]:6.1f} ms/frame  {100 * s["share"]:5.1f} %')
