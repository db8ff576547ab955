"""The classic project's helper functions, as thin functions over the roadseg package: the VGG16
download, the KITTI batch generator and the overlays written to runs/."""
import glob
import os
import sys

from roadseg import drawing, images, inference
from roadseg.data import classes, layouts, transforms
from roadseg.data.pipeline import TrainingData
from roadseg.model import vgg
from roadseg.model.ops import tf
from roadseg.model_info import ModelInfo
from roadseg.training import outputs
from roadseg.training import run as runs


def maybe_download_pretrained_vgg(data_dir, url=vgg.VGG_URL, sha256=None):
    """Make `data_dir/vgg` hold Udacity's VGG16 SavedModel, downloading vgg.zip if needed."""
    return vgg.maybe_download_pretrained_vgg(data_dir, url, sha256)


def gen_batch_function(data_folder, image_shape, label='road', seed=None):
    """Return `get_batches_fn(batch_size)` over the KITTI folder holding image_2/ and gt_image_2/,
    with random horizontal flips.

    Batches are float32 RGB images in 0..255 and one-hot [not-road, road] labels, void rows zero,
    from the tf.data pipeline main.py trains on (roadseg/data/pipeline.py).
    """
    kitti = classes.builtin('kitti_road')
    return TrainingData(layouts.kitti_pairs(data_folder, label), image_shape,
                          lambda path: classes.read_label(kitti, path), kitti.num_classes,
                          transforms.Augment('none,flip=0.5'), seed)


def _session_model(sess, logits, keep_prob, image_pl, image_shape):
    """The network being trained as an inference.Model of KITTI's road and not road, as
    gen_batch_function's labels: the softmax of its logits, which may be flattened to
    [pixels, classes] as optimize returns them."""
    num_classes = logits.shape[-1]
    probabilities = tf.reshape(tf.nn.softmax(logits), [-1, *image_shape, num_classes])
    info = ModelInfo.of_classes(image_shape, classes.builtin('kitti_road'))
    return inference.session_model(sess, image_pl, probabilities, info, {keep_prob: 1.0})


def gen_test_output(sess, logits, keep_prob, image_pl, data_folder, image_shape):
    """Yield (file name, road overlay at the original size) for each image of
    `data_folder/image_2`."""
    model = _session_model(sess, logits, keep_prob, image_pl, image_shape)
    for path in sorted(glob.glob(os.path.join(data_folder, 'image_2', '*.png'))):
        image = images.read_rgb(path)
        (probabilities,) = inference.segment(model, [image])
        yield os.path.basename(path), drawing.overlay(image, inference.classes_of(probabilities))


def save_inference_samples(runs_dir, data_dir, sess, image_shape, logits, keep_prob, input_image,
                           output_dir=None, image_paths=None,
                           colors=(None, drawing.OVERLAY_RGB)):
    """Write overlays (green road by default) for KITTI's test images, or `image_paths`, to
    `output_dir` (default `runs_dir/<timestamp>`), each at its original size under its own name.

    Returns the output folder. Unreadable images are skipped and listed at the end.
    """
    output_dir = output_dir or runs.new_run_dir(runs_dir)
    model = _session_model(sess, logits, keep_prob, input_image, image_shape)
    paths = image_paths or layouts.kitti_test_images(data_dir)
    for message in outputs.write_overlays(model, paths, output_dir, colors):
        print(f'skipped {message}', file=sys.stderr)
    return output_dir
