"""Groups: where each image was filmed, so that validation can hold out whole places.

Neighbouring frames of one drive are near-duplicates: a validation set cut from the training
drives measures how well a model remembers them, not how it does on streets it has never seen.
`--val-groups` holds out whole groups instead; docs/generalisation.md gives the protocol.

An image's group comes from its file stem:
  camvid, camvid32  the drive, the prefix before the first `_` (`0016E5_07959` -> `0016E5`)
  kitti             the category, `um`, `umm` or `uu` (KITTI Road's names carry no drive)
  cityscapes        the city, the prefix before the first `_` (`aachen_000000_000019` -> `aachen`)
  folder            none by default; `--group-by` gives a regular expression, whose first
                    capture group (or whole match) names the group, or a JSON file mapping each
                    image's stem or file name to its group
"""
import os
import re

from roadseg import files
from roadseg.data import kitti_names
from roadseg.errors import UserError

PATTERNS = {'camvid': r'^([^_]+)_', 'camvid32': r'^([^_]+)_', 'cityscapes': r'^([^_]+)_',
            'kitti': kitti_names.CATEGORY}


def grouper(dataset, group_by=None):
    """A function from an image path to its group, by `group_by` (a regular expression, or a
    JSON file of {stem or file name: group}) or else the data set's own rule."""
    if group_by and group_by.lower().endswith('.json'):
        return _from_file(group_by)
    pattern = group_by or PATTERNS.get(dataset)
    if pattern is None:
        raise UserError(f'--val-groups: the {dataset} data set has no groups of its own; give '
                        f'--group-by REGEX (e.g. "^([^_]+)_") or --group-by FILE.json')
    try:
        compiled = re.compile(pattern)
    except re.error as e:
        raise UserError(f'--group-by {pattern!r}: not a regular expression ({e})') from None

    def group_of(path):
        stem = os.path.splitext(os.path.basename(path))[0]
        match = compiled.search(stem)
        if not match:
            raise UserError(f'{path}: its name does not match --group-by {pattern!r}, so it has '
                            f'no group; change the pattern or rename the file')
        group = match.group(1) if compiled.groups else match.group(0)
        if not group:  # None: an optional first group that took no part
            raise UserError(f'{path}: --group-by {pattern!r} matches its name with no text for '
                            f'the group; change the pattern so that the group takes some')
        return group
    return group_of


def _from_file(path):
    table = files.read_json(path, 'give a JSON object {"image stem": "group", ...}')
    if not isinstance(table, dict) or not all(isinstance(v, str) and v for v in table.values()):
        raise UserError(f'{path}: a groups file holds one JSON object of '
                        f'{{"image stem": "group", ...}}, each group some text')

    def group_of(image_path):
        name = os.path.basename(image_path)
        group = table.get(name, table.get(os.path.splitext(name)[0]))
        if group is None:
            raise UserError(f'{image_path}: not in the groups file {path}; add its stem')
        return group
    return group_of


def count(pairs, group_of):
    """{group: number of images} of (image, label) pairs, sorted by group."""
    counts = {}
    for image, _ in pairs:
        group = group_of(image)
        counts[group] = counts.get(group, 0) + 1
    return dict(sorted(counts.items()))


def hold_out(pairs, wanted, group_of):
    """(pairs outside the groups `wanted`, pairs inside them), each in the given order."""
    inside = [group_of(image) in wanted for image, _ in pairs]
    return ([p for p, held in zip(pairs, inside) if not held],
            [p for p, held in zip(pairs, inside) if held])


def check_groups(wanted, present):
    """Stop on a --val-groups name that no image has, listing the groups there are."""
    unknown = [g for g in wanted if g not in present]
    if unknown:
        listed = ', '.join(f'{g} ({n} images)' for g, n in present.items())
        raise UserError(f'--val-groups: no image is of group {unknown[0]!r}; the groups are '
                        f'{listed}')
