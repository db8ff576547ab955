"""HTTP downloads that resume and verify: a file arrives whole under its name or not at all (its
length checked, and its digests when known), and a cut-off download goes on where it stopped;
`maybe_download_and_extract` fetches a zip and unpacks (roadseg.archives) one folder of it into
place, as the data sets and the VGG weights are."""
import hashlib
import http.client
import os
import shutil
import tempfile
import urllib.error
import urllib.parse
import urllib.request

from tqdm import tqdm

from roadseg import archives, files
from roadseg.errors import UserError


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
    files.remove_temporaries(parent)  # a download or extraction a kill interrupted
    print(f'{target} not found; downloading {url}')
    manual = (f'download {url} by hand and unzip it so that its {member}/ folder is {target}/')
    try:
        os.makedirs(parent, exist_ok=True)
        download(url, zip_path, sha256=sha256)
    except UserError as e:
        raise UserError(f'{e}. To proceed offline, {manual}') from None
    extract_dir = tempfile.mkdtemp(prefix='.extract-', suffix='.tmp', dir=parent)
    try:
        archives.safe_extract(zip_path, extract_dir)
        if not os.path.isdir(os.path.join(extract_dir, member)):
            raise UserError(f'{zip_path} has no {member}/ folder; {manual}')
        os.replace(os.path.join(extract_dir, member), target)
    finally:
        shutil.rmtree(extract_dir, ignore_errors=True)
    os.remove(zip_path)
    return target
