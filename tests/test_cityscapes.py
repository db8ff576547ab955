"""Cityscapes (--dataset cityscapes): the official layout read as published, labelIds mapped to
the 19 training classes with the rest void, cities as groups; on a tiny synthetic tree."""
import json
import os

import imageio.v2 as iio2
import numpy as np
import pytest

import main
from roadseg import cli
from roadseg.commands import crossval
from roadseg.data import classes as class_files
from roadseg.data import groups, layouts
from roadseg.errors import UserError
from roadseg.training import crossval as folds

# labelIds drawn into the synthetic labels: road, car, sky, and unlabelled and parking (void)
ROAD, CAR, SKY, UNLABELLED, PARKING = 7, 26, 23, 0, 9
CITIES = {'train': ('aachen', 'bochum'), 'val': ('frankfurt',)}


def make_cityscapes(root, cities=CITIES, per_city=2, size=(32, 64)):
    """Cityscapes' layout: leftImg8bit/SPLIT/CITY/CITY_SEQ_FRAME_leftImg8bit.png with its
    gtFine/SPLIT/CITY/CITY_SEQ_FRAME_gtFine_labelIds.png, road below the sky, a car on it."""
    rng = np.random.default_rng(0)
    height, width = size
    for split, names in cities.items():
        for city in names:
            for part in ('leftImg8bit', 'gtFine'):
                os.makedirs(os.path.join(root, part, split, city), exist_ok=True)
            for frame in range(per_city):
                stem = f'{city}_{frame:06d}_000019'
                ids = np.full(size, SKY, np.uint8)
                ids[height // 2:] = ROAD
                ids[height // 2:height // 2 + 4, frame * 4:frame * 4 + 8] = CAR
                ids[-2:] = UNLABELLED  # the ego vehicle's bonnet, void
                ids[height // 2, -3:] = PARKING
                image = np.where((ids == ROAD)[..., None], 80, 180).astype(np.uint8) + \
                    rng.integers(0, 20, (*size, 3), dtype=np.uint8)
                iio2.imwrite(os.path.join(root, 'leftImg8bit', split, city,
                                          stem + '_leftImg8bit.png'), image)
                iio2.imwrite(os.path.join(root, 'gtFine', split, city,
                                          stem + '_gtFine_labelIds.png'), ids)
    return str(root)


def test_cityscapes_pairs_its_official_layout_and_maps_label_ids_to_the_19_classes(tmp_path):
    data = make_cityscapes(tmp_path / 'cityscapes')
    dataset = layouts.open_dataset('cityscapes', data)
    assert dataset.classes.num_classes == 19 and dataset.classes.names[:2] == ['road',
                                                                               'sidewalk']
    assert len(dataset.train) == 4 and len(dataset.val) == 2
    for image, label in dataset.train + dataset.val:
        assert image.endswith('_leftImg8bit.png') and label.endswith('_gtFine_labelIds.png')
        assert os.path.basename(image)[:-len('leftImg8bit.png')] == \
            os.path.basename(label)[:-len('gtFine_labelIds.png')]
    classes = dataset.read_label(dataset.train[0][1])
    ids = iio2.imread(dataset.train[0][1])
    names = dataset.classes.names
    for label_id, expected in ((ROAD, names.index('road')), (CAR, names.index('car')),
                               (SKY, names.index('sky')), (UNLABELLED, class_files.VOID),
                               (PARKING, class_files.VOID)):
        assert (classes[ids == label_id] == expected).all()
    assert dataset.test_images == [image for image, _ in dataset.val]  # no test/ folder


def test_every_label_id_is_a_training_class_or_void():
    """Cityscapes' 34 labelIds: the 19 of its training classes, and 15 void (its trainId 255)."""
    lookup = class_files.builtin('cityscapes19').lookup
    assert sorted(lookup[:34][lookup[:34] != class_files.VOID]) == list(range(19))
    assert (lookup[34:] == -1).all()  # anything else in a label is refused


def test_a_label_that_is_not_label_ids_is_refused_in_one_line(tmp_path):
    data = make_cityscapes(tmp_path / 'cityscapes')
    dataset = layouts.open_dataset('cityscapes', data)
    train_ids = np.full((32, 64), 255, np.uint8)  # a labelTrainIds file given by mistake
    iio2.imwrite(dataset.train[0][1], train_ids)
    with pytest.raises(UserError, match='label value 255 at row 0, column 0 is neither a class '
                                        'nor void in .*cityscapes19.json'):
        dataset.read_label(dataset.train[0][1])


@pytest.mark.parametrize('make', ['nothing', 'empty folder', 'images only'])
def test_a_missing_copy_says_where_to_register(tmp_path, make):
    data = tmp_path / 'cityscapes'
    if make != 'nothing':
        data.mkdir()
    if make == 'images only':
        (data / 'leftImg8bit' / 'train' / 'aachen').mkdir(parents=True)
    with pytest.raises(UserError, match='register at https://www.cityscapes-dataset.com/') as e:
        layouts.open_dataset('cityscapes', str(data))
    assert len(cli.one_line(e.value).splitlines()) == 1


def test_cities_are_the_groups_of_cityscapes(tmp_path):
    dataset = layouts.open_dataset('cityscapes', make_cityscapes(tmp_path / 'cityscapes'))
    group_of = groups.grouper('cityscapes')
    assert groups.count(dataset.train + dataset.val, group_of) == {
        'aachen': 2, 'bochum': 2, 'frankfurt': 2}


def test_the_cityscapes_recipe_names_a_cityscapes_option_set():
    path = os.path.join(os.path.dirname(os.path.dirname(__file__)), 'configs',
                        'cityscapes19_mobilenetv2.json')
    with open(path) as f:
        recipe = json.load(f)
    assert recipe['dataset'] == 'cityscapes' and recipe['image_shape'] == '512x1024'


TINY = ['--dataset', 'cityscapes', '--encoder', 'mobilenetv2', '--encoder-weights', 'none',
        '--alpha', '0.35', '--batch-size', '2', '--image-shape', '32x64', '--learning-rate',
        '0.01', '--epochs', '1', '--augment', 'none,flip=0.5']


@pytest.mark.slow
def test_main_trains_on_cityscapes_and_validates_on_its_val_cities(tmp_path):
    data = make_cityscapes(tmp_path / 'cityscapes')
    run_dir = main.run(['--data-dir', data, '--runs-dir', str(tmp_path / 'runs'), *TINY])
    with open(os.path.join(run_dir, 'split.json')) as f:
        split = json.load(f)
    assert [name.split('_')[0] for name in split['val']] == ['frankfurt'] * 2
    with open(os.path.join(run_dir, 'metrics.json')) as f:
        record = json.load(f)['epochs'][-1]
    assert len(record['val']['iou']) == 19


@pytest.mark.slow
def test_crossval_holds_out_one_city_a_fold(tmp_path):
    data = make_cityscapes(tmp_path / 'cityscapes', {'train': ('aachen', 'bochum')})
    cv_dir = str(tmp_path / 'cv')
    crossval.main(['--data-dir', data, '--cv-dir', cv_dir, *TINY])
    assert sorted(os.listdir(cv_dir)) == ['aachen', 'bochum', folds.STATE]
