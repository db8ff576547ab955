"""What a training run writes for use: the model/ SavedModel with its fcn.json and manifest,
and the overlays of the data set's test images."""
import os

from tqdm import tqdm

from roadseg import drawing, files, images, inference
from roadseg.errors import UserError
from roadseg.model.ops import tf1


def save_model(sess, export_dir, input_image, keep_prob, probabilities, info):
    """Save the network as a SavedModel (tag `serve`, signature `serving_default`: RGB 0..255
    images at the training size in, per-pixel class probabilities out) with `info` as fcn.json
    and a manifest.json of the files' sizes and digests, which loading checks. Devices are
    cleared: a graph built for several GPUs or workers loads on any one machine. The graph
    keeps what inference and the variables need (`pruned`): no input pipeline."""
    signature = tf1.saved_model.predict_signature_def(
        inputs={'image': input_image, 'keep_prob': keep_prob},
        outputs={'probabilities': probabilities})
    with files.atomic_path(export_dir, replace_folder=True) as tmp:
        builder = tf1.saved_model.Builder(tmp)
        builder.add_meta_graph_and_variables(
            sess, [tf1.saved_model.tag_constants.SERVING],
            signature_def_map={'serving_default': signature}, clear_devices=True)
        builder.save()
        pruned(os.path.join(tmp, 'saved_model.pb'))
        files.write_json(os.path.join(tmp, inference.MODEL_INFO), info)
        files.write_manifest(tmp)


VARIABLE_COLLECTIONS = ('variables', 'trainable_variables', 'local_variables', 'model_variables')


def pruned(path):
    """Rewrite the SavedModel file `path` keeping only the nodes its signatures, its saver and
    its variables need, the functions they call and the variable collections: the training
    input pipeline (whose numpy_function a server cannot run) and the training tower go. An
    input that defaulted to the pipeline (Udacity's VGG16) becomes a plain placeholder."""
    from tensorflow.core.framework import variable_pb2  # loaded by now, through ops
    from tensorflow.core.protobuf import saved_model_pb2
    model = saved_model_pb2.SavedModel()
    with open(path, 'rb') as f:
        model.ParseFromString(f.read())
    for meta in model.meta_graphs:
        graph = meta.graph_def
        roots = [tensor.name for signature in meta.signature_def.values()
                 for tensor in [*signature.inputs.values(), *signature.outputs.values()]]
        roots += [meta.saver_def.restore_op_name, meta.saver_def.save_tensor_name,
                  meta.saver_def.filename_tensor_name]
        variables = [variable_pb2.VariableDef.FromString(value)
                     for key in VARIABLE_COLLECTIONS if key in meta.collection_def
                     for value in meta.collection_def[key].bytes_list.value]
        roots += [name for v in variables for name in (v.variable_name, v.initializer_name,
                                                       v.snapshot_name) if name]
        inputs = {tensor.name.split(':')[0] for signature in meta.signature_def.values()
                  for tensor in signature.inputs.values()}
        for node in graph.node:  # cut an input loose from its default
            if node.name in inputs and node.op == 'PlaceholderWithDefault':
                node.op = 'Placeholder'
                del node.input[:]
        kept = tf1.graph_util.extract_sub_graph(
            graph, sorted({name.lstrip('^').split(':')[0] for name in roots if name}))
        kept.library.CopyFrom(used_functions(kept.node, graph.library))
        kept.versions.CopyFrom(graph.versions)
        meta.graph_def.CopyFrom(kept)
        for key in list(meta.collection_def):
            if key not in VARIABLE_COLLECTIONS:
                del meta.collection_def[key]
    with open(path, 'wb') as f:
        f.write(model.SerializeToString())


def used_functions(nodes, library):
    """The part of a function library that `nodes` call, directly or through other functions."""
    from tensorflow.core.framework import function_pb2
    functions = {f.signature.name: f for f in library.function}
    wanted, queue = set(), list(nodes)
    while queue:
        node = queue.pop()
        names = [node.op] + [attr.func.name for attr in node.attr.values()] + \
            [f.name for attr in node.attr.values() for f in attr.list.func]
        for name in names:
            if name in functions and name not in wanted:
                wanted.add(name)
                queue.extend(functions[name].node_def)
    kept = function_pb2.FunctionDefLibrary()
    kept.function.extend(f for name, f in functions.items() if name in wanted)
    kept.gradient.extend(g for g in library.gradient if g.function_name in wanted)
    return kept


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
                        drawing.overlay(image, inference.classes_of(probabilities), colors))
    return bad
