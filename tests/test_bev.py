"""KITTI's bird's-eye view: the calibration reader, the devkit's homography and warp checked by
hand on a camera of known height, the round trip, the metrics on BEV maps made by hand, the
real calibration of um_000000, and bad calibration files."""
import json
import os
import shutil
import zipfile

import imageio.v3 as iio
import numpy as np
import pytest

import main
from roadseg import bev, evaluation
from roadseg.commands import evaluate, predict
from roadseg.data.classes import VOID
from roadseg.errors import PartlyFailed, UserError
from tests.conftest import SHARED_DATA, make_kitti, save_tiny_model

FOCAL, CX, CY, HEIGHT = 700.0, 620.0, 180.0, 1.6  # a level camera 1.6 m above the road
IMAGE = (375, 1242)


def calib_text(focal=FOCAL, height=HEIGHT, pitch=0.0, r0='1 0 0 0 1 0 0 0 1', cx=CX, cy=CY):
    """A KITTI calib file of a camera `height` m above a flat road, pitched down by `pitch`
    radians (the road frame's y points down, as the camera's)."""
    c, s = np.cos(pitch), np.sin(pitch)
    # camera to road: rotate about x by the pitch, then move the origin down to the road
    rotation = np.array([[1, 0, 0], [0, c, s], [0, -s, c]])
    to_road = np.hstack([rotation, [[0], [-height], [0]]])
    numbers = lambda m: ' '.join(f'{v:.12e}' for v in np.ravel(m))  # noqa: E731
    return (f'P0: {numbers(np.zeros(12))}\n'
            f'P2: {focal} 0 {cx} 0 0 {focal} {cy} 0 0 0 1 0\n'
            f'R0_rect: {r0}\n'
            f'Tr_velo_to_cam: {numbers(np.zeros(12))}\n'
            f'Tr_cam_to_road: {numbers(to_road)}\n')


def write_calib(folder, stem, text=None):
    os.makedirs(folder / 'calib', exist_ok=True)
    (folder / 'calib' / f'{stem}.txt').write_text(text or calib_text())
    return folder / 'image_2' / f'{stem}.png'


def road_point(rows, columns, height=HEIGHT):
    """The road-plane (x, z) each pixel of the level camera sees, in the devkit's pixel
    coordinates (counted from 1); z is inf at and above the horizon."""
    v, u = rows + 1.0, columns + 1.0
    with np.errstate(divide='ignore', invalid='ignore'):
        z = np.where(v > CY, FOCAL * height / (v - CY), np.inf)
        return np.where(np.isfinite(z), (u - CX) * z / FOCAL, np.inf), z


def test_reads_the_matrices_the_warp_needs(tmp_path):
    path = write_calib(tmp_path, 'um_000000').parent.parent / 'calib' / 'um_000000.txt'
    calibration = bev.read_calibration(path)
    assert calibration['P2'].shape == (3, 4) and calibration['P2'][0, 0] == FOCAL
    assert calibration['R0_rect'].shape == (3, 3) and calibration['Tr_cam_to_road'][1, 3] == -1.6


def test_homography_of_a_level_camera_by_hand():
    """u = f x / z + cx, v = f h / z + cy for a road point (x, 0, z)."""
    homography = bev.road_homography(bev.read_calibration_text(calib_text()))
    for x, z in ((0, 10), (-3, 6), (5, 40)):
        u, v, w = homography @ [x, z, 1]
        assert (u / w, v / w) == pytest.approx((FOCAL * x / z + CX, FOCAL * HEIGHT / z + CY))


def test_a_road_band_of_known_width_lands_in_the_expected_cells():
    """A 3 m wide road centred on the camera (|x| <= 1.5 m) becomes the columns whose cell
    centres are within 1.5 m of x = 0, at every distance; beyond 12 m, a line across the road,
    the rows beyond it."""
    rows, columns = np.mgrid[0:IMAGE[0], 0:IMAGE[1]]
    x, z = road_point(rows, columns)
    classes = np.where(np.isfinite(z), ((np.abs(x) <= 1.5) & (z <= 12)).astype(np.uint8), 0)
    warp = bev.Warp(bev.road_homography(bev.read_calibration_text(calib_text())), IMAGE)
    labels = warp.to_bev(classes, VOID)
    centre_x, centre_z = bev.cell_centres()
    near = (centre_z < 11.8) & (np.abs(np.abs(centre_x) - 1.5) > 0.1) & warp.visible
    assert np.array_equal(labels[near], (np.abs(centre_x[near]) < 1.5).astype(np.uint8))
    far = (centre_z > 12.2) & warp.visible
    assert not labels[far].any()
    # the grid: row 0 is the far end, column 0 the left; a level camera at 1.6 m with a
    # 1242-pixel-wide image sees |x| < z * 620 / 700 on the road
    assert centre_z[0, 0] == pytest.approx(45.975) and centre_x[0, 0] == pytest.approx(-9.975)
    assert labels.shape == (800, 400)
    seen = np.abs(centre_x) < centre_z * (CX - 1) / FOCAL - 0.05
    unseen = np.abs(centre_x) > centre_z * (IMAGE[1] - CX) / FOCAL + 0.05
    assert warp.visible[seen].all() and not warp.visible[unseen].any()
    assert (labels[unseen] == VOID).all()  # outside the image: void, as the devkit's black
    assert (warp.to_bev(classes.astype(np.float32))[unseen] == 0).all()


def test_a_pitched_camera_moves_the_road_as_by_hand():
    """Pitched down by a = 2 degrees, the road point (0, z), atan(h / z) below the horizon,
    is atan(h / z) - a below the optical axis: v = cy + f tan(atan(h / z) - a)."""
    pitch = np.radians(2)
    homography = bev.road_homography(bev.read_calibration_text(calib_text(pitch=pitch)))
    for z in (8.0, 20.0):
        u, v, w = homography @ [0, z, 1]
        assert v / w == pytest.approx(CY + FOCAL * np.tan(np.arctan(HEIGHT / z) - pitch))
        assert u / w == pytest.approx(CX)


def test_round_trip_agrees_inside_the_visible_area():
    rows, columns = np.mgrid[0:IMAGE[0], 0:IMAGE[1]]
    x, z = road_point(rows, columns)
    classes = np.where(np.isfinite(z), (np.abs(x - 0.7 * np.sin(np.minimum(z, 99) / 5)) <= 2)
                       .astype(np.uint8), VOID)
    warp = bev.Warp(bev.road_homography(bev.read_calibration_text(calib_text())), IMAGE)
    back = warp.to_image(warp.to_bev(classes, VOID), VOID)
    inside = back != VOID
    assert inside.sum() > 0.3 * classes.size
    assert (back[inside] == classes[inside]).mean() > 0.99
    # what comes back void is what the grid does not hold: above the horizon, nearer than 6 m,
    # farther than 46 m or beyond 10 m to the side
    outside = ~np.isfinite(z) | (z < 6) | (z > 46) | (np.abs(x) > 10 + 1e-9)
    assert (back[outside & (np.abs(z - 6) > 0.1)] == VOID).all()


def test_metrics_of_hand_made_bev_maps():
    labels = np.zeros(bev.SHAPE, np.uint8)
    labels[:, :80] = 1  # 20 % road
    labels[:100] = VOID  # not evaluated
    road = labels == 1

    def figures(probability):
        evaluation = bev.metrics.RoadMetrics()
        evaluation.update(labels, probability.astype(np.float32))
        return evaluation.results()
    perfect = figures(road)
    assert perfect['max_f'] == pytest.approx(1) and perfect['average_precision'] == \
        pytest.approx(1)
    assert perfect['fpr'] == 0 and perfect['fnr'] == 0
    # Empty: nothing is road above threshold 0; at threshold 0 (p >= 0) the devkit counts
    # every pixel as road, whose F is that of "everything is road": 2 * 0.2 / 1.2
    empty = figures(np.zeros(bev.SHAPE))
    assert empty['max_f'] == pytest.approx(2 * 0.2 / 1.2, abs=1e-6)
    assert empty['threshold'] == 0 and empty['recall'] == 1
    # Half right: half of the road found, and as many not-road cells called road:
    # precision 1/2, recall 1/2, F 1/2 (above "everything is road"'s 1/3)
    half = np.zeros(bev.SHAPE)
    half[:, :40] = 1
    half[:, 200:240] = 1
    figures_half = figures(half)
    assert figures_half['max_f'] == pytest.approx(0.5)
    assert figures_half['precision'] == pytest.approx(0.5)
    assert figures_half['recall'] == pytest.approx(0.5)
    assert figures_half['fnr'] == pytest.approx(0.5)
    assert figures_half['fpr'] == pytest.approx(40 / 320)


def test_evaluation_pools_categories_and_names_images_without_calibration(tmp_path):
    rows, columns = np.mgrid[0:IMAGE[0], 0:IMAGE[1]]
    x, z = road_point(rows, columns)
    classes = np.where(np.isfinite(z), (np.abs(x) <= 1.5).astype(np.uint8), VOID)
    paths = [str(write_calib(tmp_path, stem)) for stem in ('um_000000', 'umm_000001',
                                                           'uu_000002')]
    evaluation = bev.Evaluation(paths + [str(tmp_path / 'image_2' / 'uu_000003.png')])
    assert evaluation.calibrated() == ['um_000000.png', 'umm_000001.png', 'uu_000002.png']
    for path in paths:
        evaluation.update(os.path.basename(path), classes, classes.astype(np.float32))
    evaluation.update('uu_000003.png', classes, np.zeros(IMAGE, np.float32))  # no calib file
    results = evaluation.results()
    assert list(results['categories']) == ['UM_ROAD', 'UMM_ROAD', 'UU_ROAD', 'URBAN_ROAD']
    assert all(figures['max_f'] == pytest.approx(1)
               for figures in results['categories'].values())
    assert results['images'] == 3 and results['uncalibrated'] == ['uu_000003.png']
    assert evaluation.note() == ('BEV: 1 of 4 images have no calib/ file and are left out of '
                                 'the BEV figures (uu_000003.png)')


def test_the_summary_figure_is_urban_for_road_and_the_one_category_for_lanes():
    road = {'categories': {'UM_ROAD': {'max_f': 0.5}, 'URBAN_ROAD': {'max_f': 0.7}}}
    lane = {'categories': {'UM_LANE': {'max_f': 0.6}}}
    assert evaluation.bev_summary({'bev': road}) == {'max_f': 0.7}
    assert evaluation.bev_summary({'bev': lane}) == {'max_f': 0.6}
    assert evaluation.bev_summary({}) is None


def test_picture_draws_probability_outline_and_unseen_cells():
    rows, columns = np.mgrid[0:IMAGE[0], 0:IMAGE[1]]
    x, z = road_point(rows, columns)
    classes = np.where(np.isfinite(z), (np.abs(x) <= 1.5).astype(np.uint8), VOID)
    warp = bev.Warp(bev.road_homography(bev.read_calibration_text(calib_text())), IMAGE)
    image = np.full(IMAGE + (3,), 200, np.uint8)
    out = bev.picture(warp, image, classes.astype(np.float32) * (classes == 1), classes)
    assert out.shape == (800, 400, 3) and out.dtype == np.uint8
    assert (out[~warp.visible] == 96).all()
    row = 700  # z = 10.975 m: the road's |x| <= 1.5 m is green, its edges magenta
    assert tuple(out[row, 200]) == (80, 233, 80)  # 200 * 0.4 + 255 * 0.6 in green
    assert (out[row] == (255, 0, 255)).all(-1).sum() >= 2


@pytest.mark.skipif(not os.path.isdir(os.path.join(SHARED_DATA, 'kitti_road_sample')),
                    reason='the real KITTI sample (../shared/data/kitti_road_sample) is absent')
def test_real_calibration_puts_the_ego_lane_ahead():
    base = os.path.join(SHARED_DATA, 'kitti_road_sample', 'data_road', 'training')
    warp = bev.warp_for(os.path.join(base, 'image_2', 'um_000000.png'), (375, 1242))
    gt = iio.imread(os.path.join(base, 'gt_image_2', 'um_lane_000000.png'))
    lane = warp.to_bev(((gt[..., 0] > 0) & (gt[..., 2] > 0)).astype(np.uint8))
    centre_x, centre_z = bev.cell_centres()
    for distance in (8, 10, 12):  # near the car, where the lane is still straight ahead
        row = int(np.argmin(np.abs(centre_z[:, 0] - distance)))
        columns = np.flatnonzero(lane[row])
        width = columns.size * bev.RESOLUTION
        assert 2.5 <= width <= 5, (distance, width)
        assert abs(centre_x[row, columns].mean()) < 1, distance


@pytest.mark.parametrize('text, message', [
    (None, 'cannot read the calibration'),
    ('P2: 1 0 0 0 0 1 0 0 0 0 1 0\nR0_rect: 1 0 0 0 1 0 0 0 1\n',
     'no Tr_cam_to_road matrix'),
    (calib_text().replace('P2: 700.0', 'P2: seven'), 'line 2: P2 has a value that is not a '
                                                      'number'),
    (calib_text(r0='1 0 0 0 1 0'), 'R0_rect has 6 values, expected 9'),
    (calib_text(height=0.0), 'the road-plane homography is singular'),
])
def test_bad_calibration_is_one_line_naming_the_file(tmp_path, text, message):
    path = tmp_path / 'calib' / 'um_000000.txt'
    if text is not None:
        write_calib(tmp_path, 'um_000000', text)
    with pytest.raises(UserError) as error:
        bev.warp_for(str(tmp_path / 'image_2' / 'um_000000.png'), IMAGE)
    assert str(error.value).startswith(str(path)) and message in str(error.value)
    assert '\n' not in str(error.value)


# ----------------------------------------------------------------------------------------------
# The commands: evaluate.py --bev, predict.py --kitti-submission, main.py --val-bev
# ----------------------------------------------------------------------------------------------

SMALL = (45, 77)  # the tiny KITTI images; their camera sees the road from 6 m on
SMALL_CALIB = calib_text(focal=40, cx=38, cy=12)


@pytest.fixture(scope='module')
def tiny_kitti(tmp_path_factory):
    """A KITTI folder of the three categories, all but um_000003 with calibration, with
    testing images (and their calibration), and a tiny trained two-class model."""
    root = tmp_path_factory.mktemp('bev')
    stems = ['um_000000', 'umm_000001', 'uu_000002', 'um_000003']
    training = make_kitti(root / 'data', stems=stems, size=SMALL,
                          testing=[('um_000000', SMALL), ('umm_000001', SMALL)])
    for folder, names in ((training, stems[:3]),
                          (root / 'data' / 'data_road' / 'testing', stems[:2])):
        os.makedirs(os.path.join(folder, 'calib'), exist_ok=True)
        for stem in names:
            with open(os.path.join(folder, 'calib', stem + '.txt'), 'w') as f:
                f.write(SMALL_CALIB)
    save_tiny_model(str(root / 'run' / 'model'), steps=60)
    return root


def test_evaluate_bev_prints_both_views_and_names_the_uncalibrated(tiny_kitti, capsys):
    out_dir = tiny_kitti / 'eval'
    evaluate.main(['--model', str(tiny_kitti / 'run'), '--data-dir', str(tiny_kitti / 'data'),
                   '--split', 'all', '--bev', '--save-images', '--output-dir', str(out_dir)])
    printed = capsys.readouterr().out
    assert 'KITTI road: MaxF' in printed  # the perspective view
    assert "KITTI in bird's-eye view (3 images with calibration)" in printed
    rows = [line.split()[0] for line in printed.splitlines()
            if line.split() and line.split()[0].endswith('_ROAD')]
    assert rows == ['UM_ROAD', 'UMM_ROAD', 'UU_ROAD', 'URBAN_ROAD']
    assert ('BEV: 1 of 4 images have no calib/ file and are left out of the BEV figures '
            '(um_000003.png)') in printed
    results = json.loads((out_dir / 'metrics.json').read_text())
    assert results['kitti_road']['max_f'] > 0 and results['bev']['images'] == 3
    assert set(results['bev']['categories']['URBAN_ROAD']) >= {'max_f', 'average_precision',
                                                                'precision', 'recall', 'fpr',
                                                                'fnr'}
    assert sorted(os.listdir(out_dir / 'bev')) == ['um_000000.png', 'umm_000001.png',
                                                   'uu_000002.png']
    assert iio.imread(out_dir / 'bev' / 'um_000000.png').shape == (800, 400, 3)


def test_evaluate_bev_without_any_calibration_is_one_line(tiny_kitti, tmp_path):
    make_kitti(tmp_path / 'data', size=SMALL)
    with pytest.raises(UserError, match=r'--bev: none of the 3 images has a calibration file'):
        evaluate.main(['--model', str(tiny_kitti / 'run'), '--data-dir',
                       str(tmp_path / 'data'), '--split', 'all', '--bev'])


def test_kitti_submission_is_complete_and_zipped(tiny_kitti, tmp_path, capsys):
    testing = tiny_kitti / 'data' / 'data_road' / 'testing' / 'image_2'
    predict.main(['--model', str(tiny_kitti / 'run'), str(testing), '--kitti-submission',
                  str(tmp_path / 'sub')])
    names = ['um_road_000000.png', 'umm_road_000001.png']
    assert sorted(os.listdir(tmp_path / 'sub' / 'bev')) == names
    assert sorted(os.listdir(tmp_path / 'sub' / 'perspective')) == names
    with zipfile.ZipFile(tmp_path / 'sub' / 'kitti_road_bev.zip') as z:
        assert sorted(z.namelist()) == names  # at the zip's root, as KITTI's server takes them
    bev_map = iio.imread(tmp_path / 'sub' / 'bev' / names[0])
    perspective = iio.imread(tmp_path / 'sub' / 'perspective' / names[0])
    assert bev_map.shape == (800, 400) and bev_map.dtype == np.uint8
    assert perspective.shape == SMALL
    warp = bev.Warp(bev.road_homography(bev.read_calibration_text(SMALL_CALIB)), SMALL)
    assert np.array_equal(bev_map, warp.to_bev(perspective))
    assert 'KITTI submission: 2 bird\'s-eye-view maps (1 um, 1 umm)' in capsys.readouterr().out


def test_kitti_submission_with_output_dir_and_a_failed_image(tiny_kitti, tmp_path, capsys):
    """With --output-dir the usual outputs are written too; an image that cannot be read
    leaves no zip, not even an earlier run's."""
    testing = tiny_kitti / 'data' / 'data_road' / 'testing'
    predict.main(['--model', str(tiny_kitti / 'run'), str(testing / 'image_2'),
                  '--kitti-submission', str(tmp_path / 'sub'), '--output-dir',
                  str(tmp_path / 'out')])
    assert sorted(os.listdir(tmp_path / 'out')) == ['um_000000.png', 'umm_000001.png']
    assert (tmp_path / 'sub' / 'kitti_road_bev.zip').is_file()
    shutil.copytree(testing, tmp_path / 'testing')
    (tmp_path / 'testing' / 'image_2' / 'umm_000001.png').write_bytes(b'not a png')
    with pytest.raises(PartlyFailed):
        predict.main(['--model', str(tiny_kitti / 'run'), str(tmp_path / 'testing' / 'image_2'),
                      '--kitti-submission', str(tmp_path / 'sub')])
    assert not (tmp_path / 'sub' / 'kitti_road_bev.zip').exists()
    assert 'no zip, as every test image needs its map (the earlier' in capsys.readouterr().err


def test_kitti_submission_refuses_images_it_cannot_submit(tiny_kitti, tmp_path, monkeypatch):
    training = tiny_kitti / 'data' / 'data_road' / 'training' / 'image_2'
    with pytest.raises(UserError, match=r'--kitti-submission: 1 input\(s\) with no calibration '
                                        r'file, e.g. .*um_000003.png'):
        predict.main(['--model', str(tiny_kitti / 'run'), str(training), '--kitti-submission',
                      str(tmp_path / 'sub')])
    assert not os.path.exists(tmp_path / 'sub')  # stopped before any work
    iio.imwrite(tmp_path / 'street.png', np.zeros(SMALL + (3,), np.uint8))
    with pytest.raises(UserError, match="names that are not KITTI's"):
        predict.main(['--model', str(tiny_kitti / 'run'), str(tmp_path / 'street.png'),
                      '--kitti-submission', str(tmp_path / 'sub')])
    monkeypatch.chdir(tmp_path)  # without --output-dir (or a submission): runs/predict-<time>
    predict.main(['--model', str(tiny_kitti / 'run'), str(tmp_path / 'street.png')])
    assert [path.name for path in tmp_path.glob('runs/predict-*/*.png')] == ['street.png']


@pytest.mark.slow
def test_main_val_bev_validates_in_both_views(tiny_kitti, tmp_path):
    run_dir = main.run(['--data-dir', str(tiny_kitti / 'data'), '--runs-dir',
                        str(tmp_path / 'runs'), '--epochs', '1', '--batch-size', '4',
                        '--image-shape', '32x64', '--encoder', 'mobilenetv2', '--alpha', '0.35',
                        '--encoder-weights', 'none', '--val-fraction', '0.5', '--val-bev'])
    with open(os.path.join(run_dir, 'metrics.json')) as f:
        metrics = json.load(f)
    validation = metrics['epochs'][0]['val']
    assert 'kitti_road' in validation and validation['bev']['images'] >= 1
    assert 'URBAN_ROAD' in validation['bev']['categories']
    log = open(os.path.join(run_dir, 'train.log')).read()
    assert 'BEV MaxF' in log and 'MaxF' in log


def test_main_val_bev_without_calibration_is_one_line(tmp_path):
    make_kitti(tmp_path / 'data', size=SMALL)
    with pytest.raises(UserError, match='--val-bev: none of the 1 validation images has a '
                                        'calibration file'):
        main.run(['--data-dir', str(tmp_path / 'data'), '--runs-dir', str(tmp_path / 'runs'),
                  '--epochs', '1', '--encoder', 'mobilenetv2', '--encoder-weights', 'none',
                  '--image-shape', '32x64', '--val-fraction', '0.34', '--val-bev'])
