"""Extracting a zip archive without trusting it: a member whose path would land outside the
target folder (`../`, an absolute path) is refused before anything is written, and a corrupt
member stops the extraction. Its own module because unpacking is not fetching: the archive may
come from anywhere."""
import os
import zipfile

from roadseg.errors import UserError


def safe_extract(zip_path, target_dir):
    """Extract a zip archive, refusing members whose path would land outside `target_dir`."""
    root = os.path.realpath(target_dir)
    try:
        with zipfile.ZipFile(zip_path) as archive:
            for member in archive.namelist():
                dest = os.path.realpath(os.path.join(root, member))
                if dest != root and not dest.startswith(root + os.sep):
                    raise UserError(f'{zip_path}: member {member!r} would be written outside '
                                    f'{target_dir}; refusing to extract this archive')
            bad = archive.testzip()
            if bad is not None:
                raise UserError(f'{zip_path}: member {bad!r} is corrupt; delete the file and '
                                f'download it again')
            archive.extractall(root)
    except zipfile.BadZipFile as e:
        raise UserError(f'{zip_path}: not a valid zip file ({e}); delete it and download again') \
            from None
