"""What a training run writes for use: the model/ SavedModel with its fcn.json and manifest,
and the overlays of the data set's test images."""
import os

from tqdm import tqdm

from roadseg import files, images, inference
from roadseg.errors import UserError
from roadseg.model.ops import tf1


def save_model(sess, export_dir, input_image, keep_prob, probabilities, info):
    """Save the network as a SavedModel (tag `serve`, signature `serving_default`: RGB 0..255
    images at the training size in, per-pixel class probabilities out) with `info` as fcn.json
    and a manifest.json of the files' sizes and digests, which loading checks. Devices are
    cleared: a graph built for several GPUs or workers loads on any one machine."""
    signature = tf1.saved_model.predict_signature_def(
        inputs={'image': input_image, 'keep_prob': keep_prob},
        outputs={'probabilities': probabilities})
    with files.atomic_path(export_dir, replace_folder=True) as tmp:
        builder = tf1.saved_model.Builder(tmp)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={'serving_default': signature}, clear_devices=True)
        builder.save()
        files.write_json(os.path.join(tmp, inference.MODEL_INFO), info)
        files.write_manifest(tmp)


def write_overlays(model, image_paths, output_dir, colors):
    """Segment each image with `model` and write its overlay, at its original size and under
    its own name, to `output_dir`; unreadable images are skipped and their errors returned."""
    os.makedirs(output_dir, exist_ok=True)
    print(f'Writing {len(image_paths)} overlays to {output_dir}')
    bad = []
    for path in tqdm(image_paths, desc='Inference', disable=None):
        try:
            image = images.read_rgb(path)
        except UserError as e:
            bad.append(str(e))
            continue
        (probabilities,) = inference.segment(model, [image])
        name = os.path.splitext(os.path.basename(path))[0] + '.png'
        files.write_png(os.path.join(output_dir, name),
                        inference.overlay(image, inference.classes_of(probabilities), colors))
    return bad
