"""downloads.download against a local server: a cut-off download resumes where it stopped (HTTP
Range), a server that ignores Range or a part longer than the file starts it again, and a file
that fails its digest is deleted; whatever the server does, the result is the file or one
clear error."""
import hashlib
import os

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roadseg import downloads
from roadseg.errors import UserError
from tests.conftest import Handler, serve

BODY = bytes(range(256)) * 40 + b'the end'


def test_a_cut_off_download_resumes_with_a_range_request(tmp_path):
    dest = str(tmp_path / 'w.h5')
    with serve({'/w.h5': BODY}) as url:
        with pytest.raises(UserError, match=r'stopped at \d+ of \d+ bytes; run again to resume'):
            downloads.download(url + '/w.h5?truncated', dest)
        half = os.path.getsize(dest + '.part')
        assert 0 < half < len(BODY) and not os.path.exists(dest)
        digest = downloads.download(url + '/w.h5', dest, sha256=hashlib.sha256(BODY).hexdigest(),
                                md5=hashlib.md5(BODY).hexdigest())
        assert Handler.requests[-1] == ('/w.h5', f'bytes={half}-')
    assert open(dest, 'rb').read() == BODY and digest == hashlib.sha256(BODY).hexdigest()
    assert os.listdir(tmp_path) == ['w.h5']


@pytest.mark.parametrize('part, mode', [(BODY[:100], '?norange'),  # Range ignored: all again
                                        (BODY + b'more', '')])  # longer than the file: 416
def test_a_part_that_cannot_resume_is_downloaded_again(tmp_path, part, mode):
    dest = tmp_path / 'w.h5'
    (tmp_path / 'w.h5.part').write_bytes(part)
    with serve({'/w.h5': BODY}) as url:
        downloads.download(url + '/w.h5' + mode, str(dest))
    assert dest.read_bytes() == BODY and os.listdir(tmp_path) == ['w.h5']


@pytest.mark.parametrize('digest', ['sha256', 'md5'])
def test_a_file_failing_its_digest_is_deleted(tmp_path, digest):
    dest = tmp_path / 'w.h5'
    with serve({'/w.h5': BODY}) as url:
        with pytest.raises(UserError, match=fr'{digest.upper().replace("SHA", "SHA-")} '
                                            r'[0-9a-f]+, expected 0+; .*was deleted'):
            downloads.download(url + '/w.h5', str(dest), **{digest: '0' * 8})
    assert os.listdir(tmp_path) == []


def test_a_missing_file_is_one_line_naming_the_url(tmp_path):
    with serve({}) as url:
        with pytest.raises(UserError, match=r'could not download http.*/w.h5 \(HTTP 404'):
            downloads.download(url + '/w.h5', str(tmp_path / 'w.h5'))
    assert os.listdir(tmp_path) == []


@pytest.fixture(scope='module')
def server():
    with serve({'/w.h5': BODY}) as url:
        yield url


@settings(deadline=None)
@given(st.lists(st.sampled_from(['?truncated', '?norange', '']), max_size=4),
       st.binary(max_size=64))
def test_any_sequence_of_cut_offs_ends_in_the_file(server, tmp_path_factory, attempts, stale):
    """Whatever was left before (a stale part) and however often the server cuts off or
    ignores Range, each call ends in a clean error or the exact file, and complete calls give
    the file (the first of them may find a stale part, which fails its digest)."""
    sha256 = hashlib.sha256(BODY).hexdigest()
    folder = tmp_path_factory.mktemp('dl')
    dest = str(folder / 'w.h5')
    if stale:
        (folder / 'w.h5.part').write_bytes(stale)
    for mode in attempts:
        try:
            downloads.download(server + '/w.h5' + mode, dest, sha256=sha256)
        except UserError as e:
            assert mode == '?truncated' or 'SHA-256' in str(e), e
            continue
        assert open(dest, 'rb').read() == BODY
        os.remove(dest)
    try:  # a part that began stale fails its digest once, and is deleted
        downloads.download(server + '/w.h5', dest, sha256=sha256)
    except UserError as e:
        assert 'SHA-256' in str(e) and not os.path.exists(dest + '.part'), e
        downloads.download(server + '/w.h5', dest, sha256=sha256)
    assert open(dest, 'rb').read() == BODY
