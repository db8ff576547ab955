"""Files that are never seen half-written and are read within bounds: atomic writes, JSON,
capped reads of regular files only, manifests of a folder's digests; and the checks, before any
work, that an output folder can be written and no output lands on what it must not. Fetching is
roadseg.downloads', unpacking roadseg.archives'."""
import contextlib
import errno
import hashlib
import json
import os
import shutil
import stat
import tempfile

import imageio.v3 as iio

from roadseg import schemas
from roadseg.errors import UserError


@contextlib.contextmanager
def atomic_path(path, replace_folder=False):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories, so a reader never sees a half-written result. A folder
    already at `path` is replaced only with `replace_folder`, which a caller passes for folders
    it writes itself (checkpoints, a run's model); any other is refused before the block runs.
    """
    path = os.path.abspath(path)
    folder = os.path.isdir(path) and not os.path.islink(path)
    if folder and not replace_folder:
        raise UserError(f'{path}: a folder is there, and nothing is written over a folder; '
                        f'move it away or choose another path')
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=parent)
    target = os.path.join(tmp, os.path.basename(path))
    try:
        yield target
        if replace_folder and os.path.isdir(path) and not os.path.islink(path):
            shutil.rmtree(path)
        os.replace(target, path)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def remove_temporaries(folder):
    """Delete the hidden `.*.tmp` files and folders that atomic_path and the downloads leave
    when their process is killed."""
    for name in os.listdir(folder) if os.path.isdir(folder) else []:
        if name.startswith('.') and name.endswith('.tmp'):
            path = os.path.join(folder, name)
            if os.path.isdir(path):
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.remove(path)


def check_writable(folder, flag):
    """Stop with a UserError naming `flag` unless files can be written in `folder`, or, when it
    does not exist yet, in the nearest existing folder above it (where atomic_path will make
    it): every command calls this before its work, not after it. A temporary file is made and
    removed there, since permission bits do not stop root."""
    path = os.path.abspath(folder or '.')
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        path = os.path.dirname(path)
    try:
        if not os.path.isdir(path):
            raise NotADirectoryError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), path)
        handle, probe = tempfile.mkstemp(prefix='.', suffix='.tmp', dir=path)
        os.close(handle)
        os.remove(probe)
    except OSError as e:
        raise UserError(f'{flag} {folder}: {e.strerror or e}; check that the folder exists and '
                        f'is writable and that the disk has space') from None


def check_outputs(outputs, inputs=(), folders=(), replaceable=()):
    """The output policy of every command, applied before any work: stop with one line
    unless each path of `outputs` (pairs of a path and what writes it, e.g. "the mask of
    a.png") is absent or a regular file that the command may replace. Refused: two outputs at
    one path; a folder (but those in `replaceable`, earlier outputs of the same command), a
    link or any other non-regular file; an input of the command (`inputs`, compared on real
    paths, so an input linked into the output folder counts); and, with output `folders`, a
    path that a link leads out of them. A regular file at an output path is replaced
    atomically."""
    real_inputs = {os.path.realpath(path) for path in inputs}
    roots = [os.path.realpath(folder) for folder in folders]
    replaceable = {os.path.realpath(path) for path in replaceable}
    seen = {}
    for path, what in outputs:
        real = os.path.join(os.path.realpath(os.path.dirname(os.path.abspath(path))),
                            os.path.basename(path))
        if real in seen:
            raise UserError(f'{seen[real]} and {what} would both be {path}; rename one of the '
                            f'inputs or run them separately')
        seen[real] = what
        problem = None
        if roots and not any(os.path.commonpath([root, real]) == root for root in roots):
            problem = f'a link leads out of the output folder to {real}'
        elif os.path.islink(path):
            problem = 'a link is there'
        elif os.path.isdir(path) and real not in replaceable:
            problem = 'a folder is there'
        elif os.path.lexists(path) and not os.path.isdir(path) and not os.path.isfile(path):
            problem = 'something other than a regular file is there'
        elif real in real_inputs:
            problem = 'it is an input of this command'
        if problem:
            raise UserError(f'{path} ({what}): {problem}, and a command only writes over '
                            f'regular files it may replace; choose another output path')


def files_in(path):
    """`path` if it is a file, else every file below the folder `path`: a command's inputs for
    check_outputs."""
    if not os.path.isdir(path):
        return [path]
    return [os.path.join(root, name) for root, _, found in os.walk(path) for name in found]


@contextlib.contextmanager
def output_folder(folder):
    """Make `folder` and its missing parents for a command's outputs; when the command ends,
    those it made are removed again if they are still empty, so that a command that failed
    before writing anything leaves no empty folder behind."""
    made, path = [], os.path.abspath(folder)
    while not os.path.lexists(path) and os.path.dirname(path) != path:
        made.append(path)
        path = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    try:
        yield folder
    finally:
        for path in made:  # the deepest first; os.rmdir removes only empty folders
            with contextlib.suppress(OSError):
                os.rmdir(path)


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(value, f, indent=2)


# The most a reader takes from a file: records, manifests and options are far smaller; a model
# is within protocol buffers' and FlatBuffers' 2 GB
MAX_JSON_BYTES = 16 << 20
MAX_TEXT_BYTES = 1 << 20  # a KITTI calibration, CamVid's label_colors.txt
MAX_MODEL_BYTES = 2 << 30
NOT_FILES = ((stat.S_ISDIR, 'a folder'), (stat.S_ISFIFO, 'a named pipe'),
             (stat.S_ISSOCK, 'a socket'), (stat.S_ISCHR, 'a device'), (stat.S_ISBLK, 'a device'))


def _check_regular(path, mode, size, max_bytes, what, hint):
    """Stop unless `mode` and `size` are those of a regular file of at most `max_bytes`."""
    if not stat.S_ISREG(mode):
        kind = next((name for test, name in NOT_FILES if test(mode)), 'not a file')
        raise UserError(f'{path}: {kind}, not a regular file; '
                        f'{hint or f"give the {what} as a regular file"}')
    if size > max_bytes:
        raise UserError(f'{path}: over {max_bytes:,} bytes, more than a {what} holds; '
                        f'{hint or "check that it is the right file"}')


def regular_file(path, max_bytes, what, hint=None):
    """Stop with a UserError naming `path` (ending with `hint`, what to do) unless it is a
    regular file, or a link to one, of at most `max_bytes`: a folder, a device, a named pipe
    or a socket read as a `what` would read until memory runs out, or block for ever. A
    missing or unreadable path is left to the caller's OSError, in its own words."""
    status = os.stat(path)
    _check_regular(path, status.st_mode, status.st_size, max_bytes, what, hint)


def read_limited(path, max_bytes, what, hint=None):
    """The bytes of the regular file `path` of at most `max_bytes` (regular_file). It is opened
    without blocking and checked again once open, so a pipe put there meanwhile cannot block
    it either, nor a file that grew meanwhile be read past the cap."""
    regular_file(path, max_bytes, what, hint)
    with open(os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC), 'rb') as f:
        _check_regular(path, os.fstat(f.fileno()).st_mode, 0, max_bytes, what, hint)
        data = f.read(max_bytes + 1)
    _check_regular(path, stat.S_IFREG, len(data), max_bytes, what, hint)
    return data


def read_json(path, hint=None, kind=None, needs=()):
    """The JSON value in `path`, a regular file of at most MAX_JSON_BYTES; with `kind`, checked
    against that schema of roadseg.schemas, with the top-level keys `needs` (those the caller
    reads) required too. A missing, broken or misshapen file is a UserError in one line naming
    it, ending with `hint` (what to do) when given, else the kind's own advice."""
    try:
        value = json.loads(read_limited(path, MAX_JSON_BYTES, 'JSON file', hint))
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f'{path}: cannot read it ({reason})' + (f'; {hint}' if hint else '')) \
            from None
    return schemas.check(value, kind, path, hint, needs) if kind else value


NO_SPACE = os.strerror(errno.ENOSPC)  # how TensorFlow's message of a full disk ends, too


@contextlib.contextmanager
def full_disk(folder, flag=None):
    """Report a full disk while the block writes under `folder` as one line naming the folder
    (and the `flag` that gave it): an OSError ENOSPC, or TensorFlow's ResourceExhaustedError
    for it (TensorFlow maps ENOSPC to RESOURCE_EXHAUSTED, which reads as running out of
    memory), whose message ends with the C library's words."""
    try:
        yield
    except Exception as e:
        if getattr(e, 'errno', None) != errno.ENOSPC and f'; {NO_SPACE}' not in str(e):
            raise
        raise UserError(f'{f"{flag} " if flag else ""}{folder}: the disk is full ({NO_SPACE}); '
                        f'free space on it, or write somewhere else, and run again') from None


MANIFEST = 'manifest.json'  # in a model or checkpoint folder: its files' sizes and digests


def sha256_of(path):
    """The SHA-256 hex digest of a file, read in blocks."""
    digest = hashlib.sha256()
    with open(path, 'rb') as f:
        while block := f.read(1 << 22):
            digest.update(block)
    return digest.hexdigest()


def _files_below(folder):
    """The paths, relative to `folder`, of every file below it but its own manifest."""
    return sorted(os.path.relpath(os.path.join(root, name), folder)
                  for root, _, found in os.walk(folder) for name in found
                  if name != MANIFEST or root != folder)


def write_manifest(folder, names=None, **extra):
    """Write `folder/manifest.json`: the size and SHA-256 of each file in `names` (paths
    relative to `folder`; by default every file below it), and the `extra` keys."""
    if names is None:
        names = _files_below(folder)
    listed = {name: {'bytes': os.path.getsize(os.path.join(folder, name)),
                     'sha256': sha256_of(os.path.join(folder, name))} for name in names}
    write_json(os.path.join(folder, MANIFEST), {**extra, 'files': listed})


def manifest_problem(folder, names=None, complete=False, kind='manifest'):
    """Why the files of `folder` do not match its manifest.json (only those of `names` it lists,
    when given; with `complete`, also any file it does not list), or None when they match or
    there is no manifest (models written before manifests). The manifest is checked against the
    schema `kind` (a checkpoint's holds more) before any file against it."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.lexists(path):
        return 'no manifest.json' if complete else None
    try:
        manifest = read_json(path)
    except UserError as e:
        return f'unreadable manifest ({e})'
    wrong = schemas.problem(manifest, kind)
    if wrong:
        return f'{MANIFEST} is damaged: {wrong}'
    listed = manifest['files']
    if complete:
        present = _files_below(folder)
        if present != sorted(listed):
            return f'files {present} differ from the manifest\'s {sorted(listed)}'
    for name in sorted(listed) if names is None else names:
        if name not in listed:
            continue  # a file put there by hand: nothing to check it against
        file = os.path.join(folder, name)
        if not os.path.isfile(file):
            return f'{name} is missing'
        if os.path.getsize(file) != listed[name]['bytes']:
            return f'{name} has {os.path.getsize(file)} bytes, expected {listed[name]["bytes"]}'
        if sha256_of(file) != listed[name]['sha256']:
            return f'{name} is corrupt (SHA-256 mismatch)'
    return None


def write_bytes(path, data):
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


def write_png(path, pixels):
    """Write an image array as a PNG at `path` atomically."""
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, pixels, extension='.png')
