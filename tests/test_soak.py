"""benchmark.py --soak's additions of issue 48: bodies over the limit, 12-megapixel photos to
serving_default, idle partial heads and the /healthz probe, and the targets its summary checks
(tests/test_benchmark.py runs the soak as a whole)."""
import pytest

from benchmarks import service
from tests.conftest import save_tiny_model


def test_the_soak_summary_checks_5xx_memory_and_the_healthz_p99_in_every_tenth():
    answers = [('a', True, 200, 0.1), ('b', False, 413, 0.01)]
    memory = [(25, 100.0), (95, 109.0)]  # after the warm-up, and at the end: +9 %
    probes = [(t, 200, 0.01) for t in range(0, 100, 2)] + [(55, 200, 1.5)]  # 1.5 s at 55 s
    heads = [(408, 5.0), (408, 5.1), ('ConnectionResetError', 0.1)]
    summary = service.soak_summary(answers, memory, 100, 1, True, 0, heads, probes)
    assert summary['targets'] == {'no 5xx': True, 'memory within 10 %': True,
                                  '/healthz p99 under 1000 ms': False}
    assert len(summary['healthz_p99_ms_by_window']) == 10
    # 50-60 s: five probes of 10 ms and one of 1.5 s; the p99 interpolates 95 % of the way
    assert summary['healthz_worst_p99_ms'] == pytest.approx(10 + 0.95 * 1490)
    assert summary['idle_heads'] == {'408': 2, 'ConnectionResetError': 1}
    assert summary['idle_head_max_s'] == 5.1
    assert summary['by_request']['b'] == {'good': False, 'statuses': {'413': 1}, 'p99_ms': 10}
    summary = service.soak_summary(answers + [('a', True, 503, 0.1)], memory[:1] +
                                   [(95, 111.0)], 100, 1, True, 0, heads, probes[:-1])
    assert summary['targets'] == {'no 5xx': False, 'memory within 10 %': False,
                                  '/healthz p99 under 1000 ms': True}


@pytest.mark.slow
def test_a_short_soak_refuses_large_bodies_photos_and_idle_heads(tmp_path, capsys):
    save_tiny_model(str(tmp_path / 'run' / 'model'), steps=20)
    jpegs = service.kitti_jpegs(None, count=1)
    result = service.soak(str(tmp_path / 'run'), jpegs, 2, 8, str(tmp_path))
    for name in ('12 MP to serving_default', 'body declared 10 GB',
                 'chunked body past the limit'):
        assert set(result['by_request'][name]['statuses']) == {'413'}, name
    assert set(result['idle_heads']) == {'408'}
    assert sum(result['idle_heads'].values()) >= service.SOAK_IDLE_HEADS
    assert result['healthz_probes'] > 0 and result['targets']['no 5xx']
    assert (result['server_errors'], result['transport_errors'], result['unexpected']) == \
        (0, 0, 0)
    service.print_soak(result, 'tiny')
    out = capsys.readouterr().out
    assert 'idle partial heads (4 at a time): 408: ' in out and 'targets: no 5xx: met' in out
