"""Files that are never seen half-written: atomic writes, JSON, verified downloads and
traversal-safe zip extraction; and the check, before any work, that an output folder can be
written."""
import contextlib
import errno
import hashlib
import http.client
import json
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request
import zipfile

import imageio.v3 as iio
from tqdm import tqdm

from roadseg.errors import UserError


@contextlib.contextmanager
def atomic_path(path):
    """Yield a temporary sibling of `path`; rename it onto `path` only if the block succeeds.

    Works for files and directories, so a reader never sees a half-written result.
    """
    path = os.path.abspath(path)
    parent = os.path.dirname(path)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix='.' + os.path.basename(path) + '.', suffix='.tmp', dir=parent)
    target = os.path.join(tmp, os.path.basename(path))
    try:
        yield target
        if os.path.isdir(path):
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


def write_json(path, value):
    """Write `value` as indented JSON to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, 'w') as f:
        json.dump(value, f, indent=2)


def read_json(path, hint=None):
    """The JSON value in `path`; a missing or broken file is a UserError naming it, ending with
    `hint` (what to do) when given."""
    try:
        with open(path) as f:
            return json.load(f)
    except (OSError, ValueError, RecursionError) as e:  # RecursionError: nested too deeply
        reason = e.strerror if isinstance(e, OSError) and e.strerror else e
        raise UserError(f'{path}: cannot read it ({reason})' + (f'; {hint}' if hint else '')) \
            from None


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


def manifest_problem(folder, names=None, complete=False):
    """Why the files of `folder` do not match its manifest.json (only those of `names` it lists,
    when given; with `complete`, also any file it does not list), or None when they match or
    there is no manifest (models written before manifests)."""
    path = os.path.join(folder, MANIFEST)
    if not os.path.exists(path):
        return 'no manifest.json' if complete else None
    try:
        listed = read_json(path)['files']
    except (UserError, KeyError, TypeError) as e:
        return f'unreadable manifest ({e})'
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


def git_commit(folder):
    """The commit checked out in the git work tree holding `folder`, read from its .git (a
    worktree's too) without running git; None outside a work tree or for a ref it cannot
    find."""
    path = os.path.abspath(folder)
    while not os.path.exists(os.path.join(path, '.git')):
        if os.path.dirname(path) == path:
            return None
        path = os.path.dirname(path)
    git = os.path.join(path, '.git')
    try:
        if os.path.isfile(git):  # a worktree: "gitdir: PATH"
            with open(git) as f:
                git = os.path.join(path, f.read().split('gitdir:', 1)[1].strip())
        common = git
        if os.path.isfile(os.path.join(git, 'commondir')):
            with open(os.path.join(git, 'commondir')) as f:
                common = os.path.join(git, f.read().strip())
        with open(os.path.join(git, 'HEAD')) as f:
            head = f.read().strip()
        if not head.startswith('ref: '):
            return head  # a detached HEAD is the commit itself
        ref = head[len('ref: '):]
        if os.path.isfile(os.path.join(common, ref)):
            with open(os.path.join(common, ref)) as f:
                return f.read().strip()
        with open(os.path.join(common, 'packed-refs')) as f:
            return next((line.split()[0] for line in f if line.rstrip().endswith(' ' + ref)),
                        None)
    except (OSError, IndexError):
        return None


def write_bytes(path, data):
    """Write `data` to `path` atomically."""
    with atomic_path(path) as tmp, open(tmp, 'wb') as f:
        f.write(data)


def write_png(path, pixels):
    """Write an image array as a PNG at `path` atomically."""
    with atomic_path(path) as tmp:
        iio.imwrite(tmp, pixels, extension='.png')


def download(url, dest, sha256=None, md5=None, timeout=30):
    """Download `url` to `dest` with a progress bar; returns the file's SHA-256.

    The bytes gather in `dest`.part, which the next call resumes with an HTTP Range request (a
    server that ignores it sends the whole file again), so a cut-off download of KITTI's 450 MB
    goes on where it stopped. `dest` appears only when complete: its byte count checked against
    Content-Length and, when given, its SHA-256 and MD5 digests (a file that fails them is
    deleted). Raises UserError when offline, cut off or wrong.
    """
    part = dest + '.part'
    try:
        received, expected = _fetch_into(url, part, timeout)
    except _RangeRefused:  # the part is longer than the file: start again
        os.remove(part)
        received, expected = _fetch_into(url, part, timeout)
    if expected is not None and received != expected:
        raise UserError(f'download of {url} stopped at {received} of {expected} bytes; run '
                        f'again to resume it')
    digests = {'SHA-256': (hashlib.sha256(), sha256), 'MD5': (hashlib.md5(), md5)}
    with open(part, 'rb') as f:
        while chunk := f.read(1 << 20):
            for digest, _ in digests.values():
                digest.update(chunk)
    for name, (digest, wanted) in digests.items():
        if wanted is not None and digest.hexdigest() != wanted.lower():
            os.remove(part)
            raise UserError(f'download of {url} has {name} {digest.hexdigest()}, expected '
                            f'{wanted}; the file on the server changed or was corrupted, and '
                            f'was deleted')
    os.replace(part, dest)
    return digests['SHA-256'][0].hexdigest()


class _RangeRefused(Exception):
    """The server answered 416: the part on disk is not a prefix of its file."""


def _fetch_into(url, part, timeout):
    """Append `url`'s bytes to the file `part` from its current size (the whole file when the
    server ignores the Range request); (bytes on disk, the file's size or None)."""
    offset = os.path.getsize(part) if os.path.isfile(part) else 0
    request = urllib.request.Request(url, headers={'Range': f'bytes={offset}-'} if offset else {})
    received = offset
    try:
        with urllib.request.urlopen(request, timeout=timeout) as response:
            if offset and response.status != 206:
                offset = received = 0  # the whole file again
            length = response.headers.get('Content-Length')
            expected = offset + int(length) if length else None
            with open(part, 'ab' if offset else 'wb') as out, \
                    tqdm(total=expected, initial=offset, unit='B', unit_scale=True,
                         desc=os.path.basename(part[:-len('.part')]), leave=False,
                         disable=None) as bar:
                while chunk := response.read(1 << 20):
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
    except urllib.error.HTTPError as e:
        if e.code == 416 and offset:
            raise _RangeRefused from None
        raise UserError(f'could not download {url} (HTTP {e.code} {e.reason})') from None
    except http.client.IncompleteRead:
        raise UserError(f'download of {url} was cut off after {received} bytes; run again '
                        f'to resume it') from None
    except (urllib.error.URLError, OSError, http.client.HTTPException) as e:
        reason = getattr(e, 'reason', e)
        after = f' after {received} bytes; run again to resume it' if received else ''
        raise UserError(f'could not download {url} ({reason}){after}') from None
    return received, expected


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


def url_name(url):
    """The file name at the end of `url`'s path (without its query)."""
    return os.path.basename(urllib.parse.urlsplit(url).path)


def maybe_download_and_extract(url, target, member=None, sha256=None):
    """Make the folder `target` exist by downloading the zip at `url` and moving its folder
    `member` (by default one named like `target`) there.

    The zip is downloaded beside `target` and extracted into a temporary folder, and the folder
    moved into place only when complete; offline, the error says what to download by hand.
    """
    if os.path.isdir(target):
        return target
    parent = os.path.dirname(os.path.abspath(target))
    member = member or os.path.basename(os.path.normpath(target))
    zip_path = os.path.join(parent, url_name(url))
    remove_temporaries(parent)  # a download or extraction a kill interrupted
    print(f'{target} not found; downloading {url}')
    manual = (f'download {url} by hand and unzip it so that its {member}/ folder is {target}/')
    try:
        os.makedirs(parent, exist_ok=True)
        download(url, zip_path, sha256=sha256)
    except UserError as e:
        raise UserError(f'{e}. To proceed offline, {manual}') from None
    extract_dir = tempfile.mkdtemp(prefix='.extract-', suffix='.tmp', dir=parent)
    try:
        safe_extract(zip_path, extract_dir)
        if not os.path.isdir(os.path.join(extract_dir, member)):
            raise UserError(f'{zip_path} has no {member}/ folder; {manual}')
        os.replace(os.path.join(extract_dir, member), target)
    finally:
        shutil.rmtree(extract_dir, ignore_errors=True)
    os.remove(zip_path)
    return target
