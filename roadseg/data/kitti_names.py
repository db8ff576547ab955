"""KITTI Road's file names, in one place: images are `<category>_<number>` (`um_000001`,
categories um, umm and uu), ground truth and submissions `<category>_<label>_<number>`
(`um_road_000001`, label road or lane); a road-probability PNG is named as KITTI's
submissions are."""
import re

NAME = re.compile(r'([a-z]+)_(?:([a-z]+)_)?(\d+)')
CATEGORY = r'^([a-z]+)_'  # as a --group-by pattern: the category is the group


def parse(stem):
    """(category, label or None, number) of a KITTI stem, or None for other names."""
    match = NAME.fullmatch(stem)
    return match.groups() if match else None


def is_image_name(stem):
    """Whether `stem` is a KITTI image's (`um_000001`, not `um_road_000001`)."""
    parsed = parse(stem)
    return bool(parsed) and parsed[1] is None


def labelled_name(stem, label):
    """The ground-truth or submission stem of a KITTI image stem (`um_000001`, 'road' ->
    `um_road_000001`), or None for other names."""
    if not is_image_name(stem):
        return None
    category, _, number = parse(stem)
    return f'{category}_{label}_{number}'


def probability_name(stem, label='road'):
    """The file name of an 8-bit road-probability PNG: KITTI's submission name for KITTI names
    (`um_000001` -> `um_road_000001.png`), else `<stem>_prob.png`."""
    return (labelled_name(stem, label) or f'{stem}_prob') + '.png'
