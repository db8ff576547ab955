"""KITTI Road's bird's-eye view (BEV): the official devkit's warp from the camera image to a
metric grid on the road plane, its per-category evaluation there, and pictures to check a warp
by eye.

The devkit (devkit_road, BirdsEyeView.py and transform2BEV.py) describes the grid and the warp:
- the grid: 0.05 m cells, x (lateral) from -10 to 10 m, z (forward) from 6 to 46 m, so 800 rows
  by 400 columns; cell (r, c) holds the road point at its centre, x = -10 + (c + 0.5) * 0.05
  and z = 46 - (r + 0.5) * 0.05 (row 0 is the far end);
- the homography from the road plane (y = 0, y pointing down as in the camera) to the image:
  the columns x, z and 1 of P2 @ R0_rect @ inv(Tr_cam_to_road), with R0_rect and
  Tr_cam_to_road extended to 4x4;
- the sampling: a cell takes the pixel at row int(v) - 1, column int(u) - 1 of its projection
  (u, v) (the devkit counts pixels from 1, as MATLAB does), if 1 <= u <= width and
  1 <= v <= height; every other cell is 0, which for ground truth is KITTI's black, outside the
  evaluated area (void here).
The evaluation in BEV is the devkit's evalExp (metrics.RoadMetrics), pooled per category
(`um`, `umm`, `uu` from the file name) and over all of them (URBAN).
"""
import os

import cv2
import numpy as np

from roadseg import files, metrics
from roadseg.data import kitti_names
from roadseg.data.classes import VOID
from roadseg.errors import UserError

RESOLUTION = 0.05  # metres per cell
X_LIMITS = (-10.0, 10.0)  # lateral, metres
Z_LIMITS = (6.0, 46.0)  # forward, metres
SHAPE = (round((Z_LIMITS[1] - Z_LIMITS[0]) / RESOLUTION),
         round((X_LIMITS[1] - X_LIMITS[0]) / RESOLUTION))  # (800, 400)
MATRICES = {'P2': (3, 4), 'R0_rect': (3, 3), 'Tr_cam_to_road': (3, 4)}
URBAN = 'urban'  # every category pooled, as KITTI's URBAN_ROAD


# ----------------------------------------------------------------------------------------------
# Calibration and the homography
# ----------------------------------------------------------------------------------------------

def read_calibration(path):
    """The matrices of the KITTI calib file at `path` that the warp needs (read_calibration_text);
    a file that cannot be read is a UserError naming it."""
    try:
        text = files.read_limited(path, files.MAX_TEXT_BYTES, 'calibration file',
                                  'KITTI ships one per image in calib/').decode('utf-8')
    except (OSError, ValueError) as e:  # ValueError: not text
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f'{path}: cannot read the calibration ({reason}); KITTI ships one per '
                        f'image in calib/') from None
    return read_calibration_text(text, path)


def read_calibration_text(text, path='the calibration'):
    """{'P2': 3x4, 'R0_rect': 3x3, 'Tr_cam_to_road': 3x4} from the lines `NAME: v1 v2 ...` of a
    KITTI calib file; a missing matrix, a value that is not a finite number or a wrong count of
    values is a UserError naming `path`."""
    found = {}
    for number, line in enumerate(text.splitlines(), 1):
        name, colon, values = line.partition(':')
        if colon and name.strip() in MATRICES:
            try:
                numbers = np.array([float(v) for v in values.split()], np.float64)
            except ValueError:
                numbers = None
            if numbers is None or not np.isfinite(numbers).all():  # a word, NaN or infinity
                raise UserError(f'{path}, line {number}: {name.strip()} has a value that is not '
                                f'a number, or not finite')
            found[name.strip()] = numbers
    calibration = {}
    for name, shape in MATRICES.items():
        if name not in found:
            raise UserError(f'{path}: no {name} matrix; a KITTI Road calib file has P2, '
                            f'R0_rect and Tr_cam_to_road')
        if found[name].size != shape[0] * shape[1]:
            raise UserError(f'{path}: {name} has {found[name].size} values, expected '
                            f'{shape[0] * shape[1]}')
        calibration[name] = found[name].reshape(shape)
    return calibration


def _four_by_four(matrix):
    """A 3x3 rotation or 3x4 transform as a 4x4 homogeneous transform."""
    full = np.eye(4)
    full[:3, :matrix.shape[1]] = matrix
    return full


def road_homography(calibration, path='the calibration'):
    """The 3x3 homography from road-plane points [x, z, 1] (metres) to image points (u, v, 1)
    (the devkit's pixel coordinates, which count from 1). A singular one, or one whose numbers
    overflow, is a UserError."""
    to_road = _four_by_four(calibration['Tr_cam_to_road'])
    with np.errstate(all='ignore'):  # overflow and NaN are refused below, not warned about
        if not abs(np.linalg.det(to_road)) >= 1e-9:
            raise UserError(f'{path}: Tr_cam_to_road is singular; the road plane cannot be '
                            f'found')
        projection = calibration['P2'] @ _four_by_four(calibration['R0_rect']) @ \
            np.linalg.inv(to_road)
        homography = projection[:, [0, 2, 3]]
        peak = np.abs(homography).max()  # scaled to 1 for the checks: a homography's scale is free
        usable = np.isfinite(homography).all() and peak > 0 and \
            abs(np.linalg.det(homography / peak)) >= 1e-9
        if not (usable and np.isfinite(np.linalg.inv(homography / peak) / peak).all()):
            raise UserError(f'{path}: the road-plane homography is singular (the camera would '
                            f'see the road edge-on) or out of range; check P2, R0_rect and '
                            f'Tr_cam_to_road')
    return homography


def cell_centres():
    """The road-plane (x, z) of every BEV cell's centre, each [rows, columns]."""
    x = X_LIMITS[0] + (np.arange(SHAPE[1]) + 0.5) * RESOLUTION
    z = Z_LIMITS[1] - (np.arange(SHAPE[0]) + 0.5) * RESOLUTION
    return np.meshgrid(x, z)


class Warp:
    """The devkit's warp of images of `image_shape` (height, width) taken with `homography`
    into the BEV grid, and back."""

    def __init__(self, homography, image_shape):
        self.homography, self.image_shape = homography, tuple(image_shape[:2])
        x, z = cell_centres()
        u, v, w = np.tensordot(homography, np.stack([x, z, np.ones_like(x)]), 1)
        with np.errstate(divide='ignore', invalid='ignore'):
            u, v = u / w, v / w
        height, width = self.image_shape
        self.visible = (w > 0) & (u >= 1) & (u <= width) & (v >= 1) & (v <= height)
        self.rows = np.where(self.visible, v, 1).astype(np.int64) - 1
        self.columns = np.where(self.visible, u, 1).astype(np.int64) - 1

    def to_bev(self, image, fill=0):
        """`image` (HxW or HxWxC) as the BEV grid, nearest pixel per cell; cells the camera does
        not see hold `fill` (0 for images and probabilities, VOID for class maps)."""
        if image.shape[:2] != self.image_shape:
            raise ValueError(f'an image of {image.shape[:2]} for a warp of {self.image_shape}')
        bev = np.full(SHAPE + image.shape[2:], fill, image.dtype)
        bev[self.visible] = image[self.rows[self.visible], self.columns[self.visible]]
        return bev

    def to_image(self, bev, fill=0):
        """A BEV grid back in the camera image: each pixel takes the cell of the road point it
        sees; pixels above the horizon or outside the grid hold `fill`."""
        height, width = self.image_shape
        v, u = np.mgrid[1:height + 1, 1:width + 1].astype(np.float64)
        x, z, w = np.tensordot(np.linalg.inv(self.homography), np.stack([u, v, np.ones_like(u)]),
                               1)
        with np.errstate(divide='ignore', invalid='ignore'):
            x, z = x / w, z / w
        columns = np.floor((x - X_LIMITS[0]) / RESOLUTION)
        rows = np.floor((Z_LIMITS[1] - z) / RESOLUTION)
        inside = (w != 0) & (rows >= 0) & (rows < SHAPE[0]) & (columns >= 0) & \
            (columns < SHAPE[1]) & np.isfinite(x)
        image = np.full(self.image_shape + bev.shape[2:], fill, bev.dtype)
        image[inside] = bev[rows[inside].astype(np.int64), columns[inside].astype(np.int64)]
        return image


def calibration_path(image_path):
    """Where KITTI keeps the calibration of `image_path` (.../image_2/um_000000.png):
    .../calib/um_000000.txt."""
    folder = os.path.dirname(os.path.dirname(os.path.abspath(image_path)))
    stem = os.path.splitext(os.path.basename(image_path))[0]
    return os.path.join(folder, 'calib', stem + '.txt')


def warp_for(image_path, image_shape):
    """The Warp of a KITTI image from its calibration file."""
    path = calibration_path(image_path)
    return Warp(road_homography(read_calibration(path), path), image_shape)


def category(name):
    """The KITTI category of a file name (`umm_000012.png` -> `umm`), None for other names."""
    parsed = kitti_names.parse(os.path.splitext(os.path.basename(name))[0])
    return parsed[0] if parsed else None


# ----------------------------------------------------------------------------------------------
# Evaluation and pictures
# ----------------------------------------------------------------------------------------------

class Evaluation:
    """The devkit's BEV figures, pooled per category and (for road) over all, URBAN, of the
    images at `image_paths` (whose calib/ files are found beside them): fed each image's file
    name, class map and road probability. Images without calibration are listed in
    `uncalibrated` and left out."""

    def __init__(self, image_paths, label='road'):
        self.paths = {os.path.basename(path): path for path in image_paths}
        self.label = label
        self.road = {}  # category -> metrics.RoadMetrics
        self.uncalibrated = []
        self.images = 0

    def calibrated(self):
        """The names of the images that have calibration."""
        return [name for name, path in self.paths.items()
                if os.path.isfile(calibration_path(path))]

    def update(self, name, classes, road_probability):
        """Add one image; returns its Warp (None without calibration)."""
        image_path = self.paths[name]
        if not os.path.isfile(calibration_path(image_path)):
            self.uncalibrated.append(name)
            return None
        warp = warp_for(image_path, classes.shape)
        labels = warp.to_bev(classes, VOID)
        probability = warp.to_bev(metrics.quantize(road_probability))
        pooled = (URBAN,) if self.label == 'road' else ()  # lanes: KITTI has um's only
        for key in (category(image_path) or 'other', *pooled):
            self.road.setdefault(key, metrics.RoadMetrics()).update(labels, probability)
        self.images += 1
        return warp

    def results(self):
        """{'categories': {UM_ROAD: figures, ..., URBAN_ROAD: figures}, 'images': N,
        'uncalibrated': [names]} (figures as metrics.RoadMetrics.results)."""
        keys = sorted(set(self.road) - {URBAN}) + ([URBAN] if URBAN in self.road else [])
        return {'categories': {f'{key}_{self.label}'.upper(): self.road[key].results()
                               for key in keys},
                'images': self.images, 'uncalibrated': self.uncalibrated}

    def note(self):
        """What the figures leave out, in one line (None when nothing)."""
        if not self.uncalibrated:
            return None
        shown = ', '.join(self.uncalibrated[:3]) + (', ...' if len(self.uncalibrated) > 3
                                                    else '')
        return (f'BEV: {len(self.uncalibrated)} of {len(self.uncalibrated) + self.images} '
                f'images have no calib/ file and are left out of the BEV figures ({shown})')


def evaluation_for(image_paths, num_classes, label, flag, what='images'):
    """An Evaluation of `image_paths` once it can be done: a two-class (road or lane) model, and
    a calibration file for at least one image; else a UserError naming `flag`."""
    if not metrics.is_road_model(num_classes):
        raise UserError(f'{flag}: for two-class (road or lane) models, not {num_classes} '
                        f'classes')
    evaluation = Evaluation(image_paths, label)
    if not evaluation.calibrated():
        raise UserError(f'{flag}: none of the {len(image_paths)} {what} has a calibration file '
                        f'(KITTI keeps one per image in data_road/training/calib/)')
    return evaluation


def picture(warp, image, road_probability, classes=None):
    """A BEV picture to check a warp by eye: the camera image on the road plane, the road
    probability blended in green, the ground truth's road outline in magenta (with `classes`),
    and the cells the camera does not see in grey."""
    ground = warp.to_bev(image).astype(np.float32)
    probability = warp.to_bev(road_probability.astype(np.float32))[..., None]
    out = ground * (1 - 0.6 * probability) + np.array([0, 255, 0], np.float32) * 0.6 * probability
    out[~warp.visible] = 96
    out = out.round().astype(np.uint8)
    if classes is not None:
        road = (warp.to_bev(classes, VOID) == 1).astype(np.uint8)
        contours, _ = cv2.findContours(road, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, (255, 0, 255), 2)
    return out
