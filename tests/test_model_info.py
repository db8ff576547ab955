"""ModelInfo (roadseg/model_info.py), a model's fcn.json: what the writers write reads back the
same, only the fields that apply to the model are written, every fcn.json written before reads,
and any JSON object in the file is a ModelInfo or one line naming the file (issue 50). Random
files, mutations of a written one, are also read by tests/test_schemas.py."""
import dataclasses
import json
import os
import tempfile
import types

import pytest
from hypothesis import given
from hypothesis import strategies as st

from roadseg import files, schemas, zoo
from roadseg.data import classes as class_files
from roadseg.errors import UserError
from roadseg.model_info import MODEL_INFO, OWN_FIELDS, ModelInfo
from roadseg.training import options, run
from tests.test_fuzz_inputs import assert_refusal, json_values

REQUIRED = {'image_shape', 'num_classes', 'class_names', 'class_colors'}
# roadseg/shipped/camvid-road/fcn.json as main.py wrote it before issue 50: every option, those
# of other encoders and data sets included
OLD_CAMVID_ROAD = {
    'image_shape': [352, 480], 'num_classes': 2, 'class_names': ['other', 'road'],
    'class_colors': [[0, 0, 0], [128, 64, 128]], 'encoder': 'mobilenetv2', 'decoder': 'fcn4s',
    'alpha': 1.0, 'depth': 103, 'dataset': 'camvid', 'label': 'road', 'classes': None,
    'remap': 'road=3', 'epoch': 40, 'val_iou': None}


def written(*argv, epoch=3, val_iou=0.75):
    """The ModelInfo that a run of main.py with `argv` exports (run.model_info, and the epoch
    and figure train.inference_model adds)."""
    config = options.parse_args(['--data-dir', 'data', *argv])
    return dataclasses.replace(run.model_info(config, class_files.builtin('kitti_road')),
                               epoch=epoch, val_iou=val_iou)


def test_the_fields_are_the_schemas_and_the_schemas_required_ones_have_no_default():
    fcn = schemas.KINDS['fcn'][0]
    fields = {field.name: field for field in dataclasses.fields(ModelInfo)}
    assert set(fields) == set(fcn['properties']) and set(fcn['required']) == REQUIRED
    assert {name for name, field in fields.items()
            if field.default is dataclasses.MISSING} == REQUIRED
    assert set(OWN_FIELDS) <= set(fields) - REQUIRED


@pytest.mark.parametrize('argv, own', [
    ((), {'label'}),  # KITTI Road, VGG16
    (('--encoder', 'mobilenetv2', '--encoder-weights', 'none', '--dataset', 'camvid'), {'alpha'}),
    (('--encoder', 'tiramisu', '--encoder-weights', 'none', '--depth', '56', '--dataset',
      'camvid', '--remap', 'road=3'),
     {'depth', 'remap'}),
])
def test_a_written_fcn_json_reads_back_the_same_with_only_its_models_fields(tmp_path, argv,
                                                                            own):
    info = written(*argv)
    info.write(str(tmp_path))
    on_disk = json.loads((tmp_path / MODEL_INFO).read_text())
    assert set(on_disk) == REQUIRED | {'encoder', 'decoder', 'dataset', 'epoch', 'val_iou'} | own
    assert schemas.problem(on_disk, 'fcn') is None and on_disk == info.to_json()
    assert ModelInfo.read(str(tmp_path), 'the model') == info == ModelInfo.from_json(on_disk)
    assert isinstance(info.image_shape, tuple) and hash(info) == hash(ModelInfo.from_json(
        on_disk))


def test_fields_that_do_not_apply_are_dropped_when_made_and_none_is_never_written():
    info = ModelInfo([32, 64], 2, ['a', 'b'], [[0, 0, 0], [1, 2, 3]], encoder='vgg16',
                     alpha=0.5, depth=56, dataset='camvid', label='lane')
    assert (info.alpha, info.depth, info.label, info.kitti_label) == (None, None, None, 'road')
    assert info.to_json() == {'image_shape': [32, 64], 'num_classes': 2,
                              'class_names': ['a', 'b'], 'class_colors': [[0, 0, 0], [1, 2, 3]],
                              'encoder': 'vgg16', 'dataset': 'camvid'}
    lane = dataclasses.replace(info, dataset='kitti', label='lane', encoder='mobilenetv2')
    assert (lane.kitti_label, lane.alpha, lane.to_json()['label']) == ('lane', None, 'lane')
    with pytest.raises(dataclasses.FrozenInstanceError):
        info.epoch = 3


def test_an_fcn_json_written_before_reads_without_what_does_not_apply(tmp_path):
    (tmp_path / MODEL_INFO).write_text(json.dumps({**OLD_CAMVID_ROAD, 'unknown': [1]}))
    info = ModelInfo.read(str(tmp_path), 'old')
    assert (info.encoder, info.alpha, info.remap, info.epoch) == ('mobilenetv2', 1.0, 'road=3',
                                                                 40)
    assert (info.depth, info.label, info.classes, info.val_iou) == (None, None, None, None)
    assert info.to_json() == {key: value for key, value in OLD_CAMVID_ROAD.items()
                              if key not in ('depth', 'label', 'classes', 'val_iou')}


@pytest.mark.parametrize('name', sorted(zoo.SHIPPED))
def test_each_shipped_fcn_json_reads_as_the_fields_that_apply(name):
    folder = zoo.folder_of(name)
    if not os.path.isdir(folder):
        pytest.skip(f'{name} is not shipped in this checkout')
    on_disk = files.read_json(os.path.join(folder, MODEL_INFO))
    info = ModelInfo.read(folder, name)
    assert info.to_json().items() <= on_disk.items() and info.kitti_label == 'road'
    assert info.num_classes == len(info.class_names) == len(info.class_colors)


def test_a_missing_fcn_json_is_one_line_naming_the_model(tmp_path):
    with pytest.raises(UserError, match=r'^--model m.tflite: no fcn.json beside it; keep the '
                                        r'fcn.json that main.py or export.py wrote') as refused:
        ModelInfo.read(str(tmp_path), 'm.tflite')
    assert_refusal(refused.value, 'm.tflite')


# fcn.json's fields, each of its own shape (the classes' lists of num_classes items, drawn apart)
OPTIONAL_VALUES = {
    'encoder': st.sampled_from(['vgg16', 'mobilenetv2', 'tiramisu']),
    'decoder': st.sampled_from(['fcn8s', 'fpn', None]), 'alpha': st.floats(0.1, 2),
    'depth': st.sampled_from([56, 103, None]),
    'dataset': st.sampled_from(['kitti', 'camvid', 'folder']),
    'label': st.sampled_from(['road', 'lane', None]), 'classes': st.sampled_from(['c.json', None]),
    'remap': st.sampled_from(['road=3', None]), 'epoch': st.integers(1, 50) | st.none(),
    'val_iou': st.floats(0, 1) | st.none(), 'other': json_values}


@st.composite
def fcn_jsons(draw):
    """An fcn.json of any fields that main.py or export.py may have written, sound."""
    count = draw(st.integers(1, 3))
    value = {'image_shape': draw(st.lists(st.sampled_from([32, 64, 352]), min_size=2,
                                          max_size=2)),
             'num_classes': count,
             'class_names': draw(st.lists(st.text(max_size=4), min_size=count, max_size=count)),
             'class_colors': draw(st.lists(st.lists(st.integers(0, 255), min_size=3, max_size=3),
                                           min_size=count, max_size=count))}
    return {**value, **draw(st.fixed_dictionaries({}, optional=OPTIONAL_VALUES))}


@st.composite
def spoiled(draw, documents):
    """One of `documents` with a field removed or replaced by any JSON."""
    value = draw(documents)
    key = draw(st.sampled_from(sorted(value)))
    return {**{k: v for k, v in value.items() if k != key},
            **draw(st.just({}) | json_values.map(lambda other: {key: other}))}


@given(st.one_of(fcn_jsons(), spoiled(fcn_jsons()), json_values))
def test_any_json_as_fcn_json_is_a_model_info_that_writes_what_it_read_or_one_line(value):
    with tempfile.TemporaryDirectory() as folder:  # Hypothesis runs the test many times
        path = os.path.join(folder, MODEL_INFO)
        with open(path, 'w') as f:
            json.dump(value, f)
        try:
            info = ModelInfo.read(folder, 'the model')
        except UserError as e:
            assert_refusal(e, path)
            return
        info.write(folder)
        again = ModelInfo.read(folder, 'the model')
    rewritten = info.to_json()
    assert json.dumps(again.to_json()) == json.dumps(rewritten)
    assert schemas.problem(rewritten, 'fcn') is None
    assert {key: value[key] for key in rewritten} == rewritten  # the same values, fewer keys
    for name, (deciding, applies) in OWN_FIELDS.items():
        assert name not in rewritten or rewritten.get(deciding) == applies



def test_a_runs_export_writes_its_epoch_and_figure_and_only_its_models_fields(sess, tmp_path):
    """train.inference_model's export: run.model_info with the epoch and key metric."""
    from roadseg.model.ops import tf, tf1
    from roadseg.training import train
    config = options.parse_args(['--data-dir', 'data', '--image-shape', '32x64', '--encoder',
                                 'mobilenetv2', '--encoder-weights', 'none', '--dataset',
                                 'camvid', '--remap', 'road=3'])
    image = tf1.placeholder(tf.float32, [None, 32, 64, 3], 'image')
    keep_prob = tf1.placeholder_with_default(1.0, [], 'keep_prob')
    net = types.SimpleNamespace(input_image=image, keep_prob=keep_prob)
    built = types.SimpleNamespace(net=net, probabilities=tf.nn.softmax(image[..., :2] * keep_prob))
    data = types.SimpleNamespace(dataset=types.SimpleNamespace(
        classes=class_files.builtin('kitti_road')))
    model, export = train.inference_model(sess, built, config, data, str(tmp_path))
    assert model.info == run.model_info(config, data.dataset.classes) and model.info.alpha == 1.0
    export(3, 0.75)
    on_disk = json.loads((tmp_path / 'model' / MODEL_INFO).read_text())
    assert on_disk == {**model.info.to_json(), 'epoch': 3, 'val_iou': 0.75}
    assert not {'depth', 'label', 'classes'} & set(on_disk)
    export(4)  # a final model's last epoch: no figure
    assert 'val_iou' not in json.loads((tmp_path / 'model' / MODEL_INFO).read_text())
