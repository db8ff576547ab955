"""benchmark.py --serve: serve.py under load on loopback, against predict.py on the same files.

For each model, serve.py runs as a subprocess on a free port of 127.0.0.1; for each number of
concurrent clients, every client (a thread with its own connection) posts the same JPEGs to
/segment?output=mask one after the other, `requests` times. Reported: throughput, p50 and p99
latency, the mean batch size (from the server's /metrics), errors, and the server's peak
resident memory. predict.py --mask on the same JPEGs is run before and after the service, and
the mean of the two is the reference, so a slow minute of this machine weighs on both sides.
"""
import base64
import io
import os
import re
import resource
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

import httpx2 as httpx
import numpy as np
from PIL import Image

from benchmarks import video
from roadseg import cli, images, media
from roadseg.data.layouts import IMAGE_EXTENSIONS
from roadseg.errors import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))  # holds serve.py
KITTI_SIZE = (375, 1242)
JPEG_QUALITY = 90
START_TIMEOUT_S = 120
REQUEST_TIMEOUT_S = 60


def kitti_jpegs(folder, count=8):
    """Up to `count` images of `folder` (or, without one, smooth synthetic street-like
    scenes) at KITTI's 1242x375, as JPEG bytes."""
    if folder:
        paths = [p for p in media.input_files([folder], {})
                 if p.lower().endswith(IMAGE_EXTENSIONS)][:count]
        if not paths:
            raise UserError(f'--serve-images {folder}: no images there')
        pictures = [images.resize_image(images.read_rgb(p), KITTI_SIZE) for p in paths]
    else:
        rows, cols = np.mgrid[0:KITTI_SIZE[0], 0:KITTI_SIZE[1]]
        pictures = [np.stack([(rows * 0.5 + cols * 0.1 * i) % 256, (cols * 0.2 + 40 * i) % 256,
                              np.where(rows > KITTI_SIZE[0] // 2, 90, 200)], -1)
                    .astype(np.uint8) for i in range(count)]
    jpegs = []
    for picture in pictures:
        buffer = io.BytesIO()
        Image.fromarray(picture).save(buffer, 'JPEG', quality=JPEG_QUALITY)
        jpegs.append(buffer.getvalue())
    return jpegs


def free_port():
    with socket.socket() as s:
        s.bind(('127.0.0.1', 0))
        return s.getsockname()[1]


def peak_memory_mb(pid='self'):
    """A process's peak resident memory: /proc's VmHWM where there is one, as getrusage's
    ru_maxrss survives fork and exec (a child of a big parent reports at least the parent's);
    getrusage serves only this process."""
    try:
        with open(f'/proc/{pid}/status') as f:
            return next(int(line.split()[1]) for line in f if line.startswith('VmHWM:')) / 1024
    except (OSError, StopIteration):
        if pid != 'self':
            raise
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def batch_totals(url):
    """(model calls, images) so far, from the server's fcn_batch_size histogram."""
    text = httpx.get(url + '/metrics', timeout=REQUEST_TIMEOUT_S).text
    count = float(re.search(r'^fcn_batch_size_count (\S+)$', text, re.M)[1])
    total = float(re.search(r'^fcn_batch_size_sum (\S+)$', text, re.M)[1])
    return count, total


class Server:
    """serve.py as a user starts it, on a free port of 127.0.0.1, with `flags`; its output
    goes to the file `log`."""

    def __init__(self, model, log, *flags):
        self.url = f'http://127.0.0.1:{free_port()}'
        self.log_path, self.log = log, open(log, 'w')
        self.process = subprocess.Popen(
            [sys.executable, os.path.join(ROOT, 'serve.py'), '--model', os.path.abspath(model),
             '--port', self.url.rsplit(':', 1)[1], *flags],
            stdout=self.log, stderr=subprocess.STDOUT, cwd=ROOT)
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline and self.process.poll() is None:
            try:
                if httpx.get(self.url + '/healthz', timeout=1).status_code == 200:
                    return
            except httpx.TransportError:
                time.sleep(0.2)
        self.stop()
        with open(log) as f:
            said = f.read().strip().splitlines()
        raise UserError(f'serve.py --model {model} did not start: '
                        f'{said[-1] if said else "no output"} (see {log})')

    def stop(self):
        """SIGTERM, as a process manager stops it; its exit status."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout=60)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.log.close()

    def output(self):
        with open(self.log_path) as f:
            return f.read()


def load(url, jpegs, clients, requests, deadline_s):
    """`clients` threads posting `requests` JPEGs each (fewer if `deadline_s` passes)."""
    latencies, errors, lock = [], [], threading.Lock()
    stop_at = time.monotonic() + deadline_s

    def client(offset):
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
            for i in range(requests):
                if time.monotonic() > stop_at:
                    return
                start = time.perf_counter()
                try:
                    response = http.post('/segment?output=mask',
                                         content=jpegs[(offset + i) % len(jpegs)],
                                         headers={'Content-Type': 'image/jpeg'})
                    error = None if response.status_code == 200 else str(response)
                except httpx.HTTPError as e:
                    error = str(e)
                seconds = time.perf_counter() - start
                with lock:
                    if error:
                        errors.append(error)
                    else:
                        latencies.append(seconds)

    calls_before, images_before = batch_totals(url)
    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    start = time.perf_counter()
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    seconds = time.perf_counter() - start
    calls, served = (after - before for after, before in
                     zip(batch_totals(url), (calls_before, images_before)))
    p50, p99 = (float(np.percentile(latencies, q)) * 1e3 for q in (50, 99)) \
        if latencies else (float('nan'),) * 2
    return {'clients': clients, 'requests': len(latencies) + len(errors),
            'images_per_s': len(latencies) / seconds, 'p50_ms': p50, 'p99_ms': p99,
            'mean_batch': served / calls if calls else float('nan'), 'errors': len(errors),
            'first_error': errors[0] if errors else None, 'seconds': seconds}


def predict_rate(model, folder, output_dir):
    """predict.py --mask's own frames per second on the JPEGs in `folder`."""
    return video.predict_rate(os.path.abspath(model), folder, output_dir, '--mask')['frames_per_s']


def measure_serve(models, jpegs, clients_levels, requests, deadline_s, folder):
    """For each model: predict.py's rate, serve.py under each load, predict.py's rate again,
    and the server's peak memory."""
    inputs = os.path.join(folder, 'jpegs')
    os.makedirs(inputs, exist_ok=True)
    for i in range(requests):  # predict.py sees as many files as one client sends
        with open(os.path.join(inputs, f'{i:04d}.jpg'), 'wb') as f:
            f.write(jpegs[i % len(jpegs)])
    results = []
    for model in models:
        print(f'predict.py --mask on {requests} JPEGs with {model} ...', flush=True)
        rates = [predict_rate(model, inputs, os.path.join(folder, 'predicted'))]
        server = Server(model, os.path.join(folder, f'serve-{len(results)}.log'))
        try:
            levels = []
            for clients in clients_levels:
                print(f'serve.py: {clients} clients x {requests} requests ...', flush=True)
                levels.append(load(server.url, jpegs, clients, requests, deadline_s))
            peak = peak_memory_mb(server.process.pid)
        finally:
            server.stop()
        rates.append(predict_rate(model, inputs, os.path.join(folder, 'predicted')))
        results.append({'model': model, 'levels': levels, 'server_peak_rss_mb': peak,
                        'predict_images_per_s_runs': rates,
                        'predict_images_per_s': statistics.mean(rates)})
    return results


def print_serve_table(results):
    """The load figures per model and level, with the issue's targets."""
    print(f'\nserve.py on loopback: POST /segment?output=mask, {KITTI_SIZE[1]}x{KITTI_SIZE[0]} '
          f'JPEGs')
    header = ('clients', 'requests', 'img/s', '% predict', 'p50 ms', 'p99 ms', 'p99/p50',
              'mean batch', 'errors')
    for result in results:
        print(f'{result["model"]}: predict.py --mask {result["predict_images_per_s"]:.1f} '
              f'img/s (runs before and after: '
              f'{", ".join(f"{r:.1f}" for r in result["predict_images_per_s_runs"])}); '
              f'server peak memory {result["server_peak_rss_mb"]:.0f} MB')
        rows = [(str(r['clients']), str(r['requests']), f'{r["images_per_s"]:.1f}',
                 f'{100 * r["images_per_s"] / result["predict_images_per_s"]:.0f}',
                 f'{r["p50_ms"]:.0f}', f'{r["p99_ms"]:.0f}', f'{r["p99_ms"] / r["p50_ms"]:.2f}',
                 f'{r["mean_batch"]:.2f}', str(r['errors'])) for r in result['levels']]
        for line in cli.aligned(header, rows):
            print('  ' + line)
        for r in result['levels']:
            if r['first_error']:
                print(f'  {r["clients"]} clients, first error: {r["first_error"]}')
    print('targets (int8 TFLite at 160x576, 16 clients): >= 80 % of predict.py, '
          'p99 <= 3x p50, no errors')


def run(models, image_folder, clients_levels, requests, deadline_s):
    """measure_serve in a temporary folder; the results."""
    jpegs = kitti_jpegs(image_folder)
    with tempfile.TemporaryDirectory() as folder:
        return measure_serve(models, jpegs, clients_levels, requests, deadline_s, folder)


# ----------------------------------------------------------------------------------------------
# The soak: good and bad requests mixed, for a bounded time
# ----------------------------------------------------------------------------------------------

SOAK_SAMPLE_S = 2  # how often the server's resident memory is read
# Resident memory swings by a tenth from one sample to the next (allocator arenas of the
# threads), so growth compares medians of windows: the tenth of the time after the first
# fifth (the warm-up), against the last tenth.
SOAK_WARM_UP, SOAK_WINDOW = 0.2, 0.1
# The server's body limit in the soak: over the mix's largest good request (0.3 MB), so that
# a chunked body streamed past it costs 2 MB of loopback, not the default 64 MB
SOAK_MAX_BODY_BYTES = 2_000_000
SOAK_IDLE_HEADS = 4  # connections at a time that send half a request head and idle
SOAK_PROBE_S = 0.5  # how often a client of its own times /healthz
TARGET_GROWTH_PERCENT, TARGET_HEALTHZ_P99_MS = 10, 1000
HALF_A_HEAD = b'GET /healthz HTTP/1.1\r\nHost: soak\r\n'


def large_jpeg(size=(3000, 4000)):
    """A smooth photo-sized JPEG (4000x3000: 12 megapixels in about 0.2 MB)."""
    corners = np.array([[[30, 90, 200], [200, 60, 40]], [[90, 90, 90], [250, 250, 250]]],
                       np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(corners).resize(size[::-1], Image.BILINEAR).save(buffer, 'JPEG',
                                                                      quality=JPEG_QUALITY)
    return buffer.getvalue()


def soak_requests(jpeg):
    """The soak's mix: (name, method, path, httpx keyword arguments, good), the bad ones each
    a kind of request the service must refuse with a 4xx and survive. Method 'raw' sends
    `data` as it is on a connection of its own (raw_status)."""
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB').resize((64, 32))).tolist()
    b64 = base64.b64encode(jpeg).decode()

    def body(data, kind='image/jpeg'):
        return {'content': data, 'headers': {'Content-Type': kind}}
    image = body(jpeg)
    predict = '/v1/models/fcn:predict'
    upload = b'POST /segment HTTP/1.1\r\nHost: soak\r\nContent-Type: image/jpeg\r\n'
    chunk = 65536
    chunks = b''.join(b'%x\r\n' % chunk + b'\0' * chunk + b'\r\n'
                      for _ in range(SOAK_MAX_BODY_BYTES // chunk + 2))
    return [
        ('segment mask', 'post', '/segment?output=mask', image, True),
        ('segment overlay', 'post', '/segment', image, True),
        ('predict b64', 'post', predict, {'json': {'signature_name': 'classes',
                                                   'instances': [{'b64': b64}]}}, True),
        ('predict pixels', 'post', predict, {'json': {'signature_name': 'classes',
                                                      'instances': [pixels]}}, True),
        ('metadata', 'get', '/v1/models/fcn/metadata', {}, True),
        ('health', 'get', '/healthz', {}, True),
        ('not an image', 'post', '/segment', body(b'hello'), False),
        ('truncated JPEG', 'post', '/segment', body(jpeg[:len(jpeg) // 3]), False),
        ('unknown output', 'post', '/segment?output=sky', image, False),
        ('text body', 'post', '/segment', body(b'hi', 'text/plain'), False),
        ('malformed JSON', 'post', predict, {'content': b'{"instances": ['}, False),
        ('NaN pixel', 'post', predict, {'content': b'{"instances": [[[[1, 2, NaN]]]]}'}, False),
        ('2-D instance', 'post', predict, {'json': {'instances': [[[1, 2, 3], [4, 5, 6]]]}},
         False),
        ('too many images', 'post', predict, {'json': {'instances': [{'b64': 'AA=='}] * 65}},
         False),
        ('long URL', 'get', '/healthz?q=' + 'a' * 20_000, {}, False),
        ('large headers', 'get', '/healthz', {'headers': {'X-Big': 'b' * 40_000}}, False),
        ('unknown path', 'get', '/v2/nothing', {}, False),
        ('12 MP to serving_default', 'post', predict, {'json': {'instances': [
            {'b64': base64.b64encode(large_jpeg()).decode()}]}}, False),
        ('body declared 10 GB', 'raw', '/segment', {'data': upload + b'Content-Length: '
                                                    b'10000000000\r\n\r\n' + b'\0' * chunk},
         False),
        ('chunked body past the limit', 'raw', '/segment', {
            'data': upload + b'Transfer-Encoding: chunked\r\n\r\n' + chunks}, False),
    ]


def resident_mb(pid):
    """A process's resident memory now (VmRSS), in MB."""
    with open(f'/proc/{pid}/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024


def address(url):
    host, port = url.rsplit('/', 1)[-1].rsplit(':', 1)
    return host, int(port)


def raw_status(url, data):
    """The status the server answers `data`, sent as it is on a connection of its own."""
    with socket.create_connection(address(url), timeout=REQUEST_TIMEOUT_S) as connection:
        connection.sendall(data)
        return status_of(connection)


def status_of(connection):
    """The status of the answer on `connection`, read until its status line (or the close)."""
    answer = b''
    while b'\r\n' not in answer and (chunk := connection.recv(65536)):
        answer += chunk
    return int(answer.split()[1]) if answer else 'closed without an answer'


def idle_heads(url, done, record):
    """Until `done`: SOAK_IDLE_HEADS connections at a time that send half a request head and
    idle until the server closes them (408 after its head timeout, or REQUEST_TIMEOUT_S, after
    which they close), each recorded as (status, seconds)."""
    while not done.is_set():
        start = time.perf_counter()
        connections = [socket.create_connection(address(url), timeout=REQUEST_TIMEOUT_S)
                       for _ in range(SOAK_IDLE_HEADS)]
        for connection in connections:
            connection.sendall(HALF_A_HEAD)
        for connection in connections:
            with connection:
                try:
                    status = status_of(connection)
                except OSError as e:
                    status = type(e).__name__
                record((status, time.perf_counter() - start))


def probe_health(url, done, record):
    """Until `done`: GET /healthz every SOAK_PROBE_S, each recorded as (time, status,
    seconds)."""
    begun = time.monotonic()
    with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as http:
        while not done.wait(SOAK_PROBE_S):
            start = time.perf_counter()
            try:
                status = http.get('/healthz').status_code
            except httpx.HTTPError as e:
                status = type(e).__name__
            record((time.monotonic() - begun, status, time.perf_counter() - start))


def soak(model, jpegs, clients, seconds, folder):
    """serve.py with `model` under `clients` threads sending soak_requests in turn for
    `seconds`, beside idle partial heads and a /healthz probe: answers by request and status,
    5xx and transport errors, p50/p99 latency of the good and the bad, the probe's p99, and
    resident memory after warm-up against the end."""
    server = Server(model, os.path.join(folder, 'soak.log'), '--max-body-bytes',
                    str(SOAK_MAX_BODY_BYTES))
    mix = soak_requests(jpegs[0])
    answers, heads, probes, memory = [], [], [], []
    lock, done = threading.Lock(), threading.Event()

    def client(offset):
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            i = offset
            while not done.is_set():
                name, method, path, kwargs, good = mix[i % len(mix)]
                i += 1
                start = time.perf_counter()
                try:
                    status = raw_status(server.url, kwargs['data']) if method == 'raw' else \
                        getattr(http, method)(path, **kwargs).status_code
                except (httpx.HTTPError, OSError) as e:
                    status = type(e).__name__
                with lock:
                    answers.append((name, good, status, time.perf_counter() - start))

    def sample():
        start = time.monotonic()
        while not done.wait(SOAK_SAMPLE_S):
            memory.append((time.monotonic() - start, resident_mb(server.process.pid)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    threads += [threading.Thread(target=sample),
                threading.Thread(target=idle_heads, args=(server.url, done, heads.append)),
                threading.Thread(target=probe_health, args=(server.url, done, probes.append))]
    try:
        for thread in threads:
            thread.start()
        time.sleep(seconds)
        done.set()
        for thread in threads:
            thread.join()
        alive = server.process.poll() is None
    finally:
        status = server.stop()
    return soak_summary(answers, memory, seconds, clients, alive, status, heads, probes)


def soak_summary(answers, memory, seconds, clients, alive, exit_status, heads=(), probes=()):
    """soak's figures from its (name, good, status, seconds) answers, (time, MB) samples,
    idle heads' (status, seconds) and /healthz probes' (time, status, seconds), with the
    targets checked: no 5xx, resident memory after warm-up within TARGET_GROWTH_PERCENT, the
    probe's p99 under TARGET_HEALTHZ_P99_MS in every tenth of the time."""
    by_request = {}
    for name, good, status, took in answers:
        counts = by_request.setdefault(name, {'good': good, 'statuses': {}, 'times': []})
        counts['statuses'][str(status)] = counts['statuses'].get(str(status), 0) + 1
        counts['times'].append(took)
    for counts in by_request.values():
        counts['p99_ms'] = float(np.percentile(counts.pop('times'), 99)) * 1e3
    statuses = [status for _, _, status, _ in answers] + [status for _, status, _ in probes]
    wrong = sum(1 for _, good, status, _ in answers
                if status != 200 and good or not good and not (isinstance(status, int) and
                                                               400 <= status < 500))
    settled = [mb for t, mb in memory if t >= SOAK_WARM_UP * seconds] or [float('nan')]
    after_warm_up = float(np.median([mb for t, mb in memory if SOAK_WARM_UP * seconds <= t <
                                     (SOAK_WARM_UP + SOAK_WINDOW) * seconds] or settled[:1]))
    end = float(np.median([mb for t, mb in memory if t >= (1 - SOAK_WINDOW) * seconds]
                          or settled[-1:]))
    growth = 100 * (end / after_warm_up - 1)

    def percentiles(good):
        times = [s for _, g, _, s in answers if g == good]
        return [float(np.percentile(times, q)) * 1e3 if times else float('nan')
                for q in (50, 99)]
    windows = [[] for _ in range(round(1 / SOAK_WINDOW))]
    for t, _, took in probes:
        windows[min(int(t * len(windows) / seconds), len(windows) - 1)].append(took)
    healthz_p99 = [float(np.percentile(w, 99)) * 1e3 for w in windows if w]
    errors = sum(isinstance(s, int) and s >= 500 for s in statuses)
    worst = max(healthz_p99, default=float('nan'))
    head_statuses = {}
    for status, _ in heads:
        head_statuses[str(status)] = head_statuses.get(str(status), 0) + 1
    return {'seconds': seconds, 'clients': clients, 'requests': len(answers),
            'requests_per_s': len(answers) / seconds,
            'server_errors': errors,
            'transport_errors': sum(not isinstance(s, int) for s in statuses),
            'unexpected': wrong, 'by_request': by_request,
            'good_p50_ms': percentiles(True)[0], 'good_p99_ms': percentiles(True)[1],
            'bad_p50_ms': percentiles(False)[0], 'bad_p99_ms': percentiles(False)[1],
            'idle_heads': head_statuses,
            'idle_head_max_s': max((s for _, s in heads), default=float('nan')),
            'healthz_probes': len(probes), 'healthz_p99_ms_by_window': healthz_p99,
            'healthz_worst_p99_ms': worst,
            'rss_after_warm_up_mb': after_warm_up, 'rss_end_mb': end,
            'rss_max_mb': max(settled), 'rss_growth_percent': growth,
            'rss_samples': memory, 'server_survived': alive, 'server_exit_status': exit_status,
            'targets': {'no 5xx': errors == 0,
                        f'memory within {TARGET_GROWTH_PERCENT} %':
                            abs(growth) <= TARGET_GROWTH_PERCENT,
                        f'/healthz p99 under {TARGET_HEALTHZ_P99_MS} ms':
                            worst < TARGET_HEALTHZ_P99_MS}}


def print_soak(result, model):
    """The soak's figures as a table a person can check against the targets."""
    print(f'\nserve.py soak with {model}: {result["clients"]} clients, '
          f'{result["seconds"]:.0f} s, {result["requests"]} requests '
          f'({result["requests_per_s"]:.1f}/s), good and bad in turn')
    rows = [(name, 'good' if counts['good'] else 'bad',
             ', '.join(f'{status}: {n}' for status, n in sorted(counts['statuses'].items())),
             f'p99 {counts["p99_ms"]:.0f} ms') for name, counts in result['by_request'].items()]
    for line in cli.aligned(None, rows, left=3):
        print('  ' + line)
    print(f'5xx: {result["server_errors"]}, transport errors: {result["transport_errors"]}, '
          f'answers other than expected (200 good, 4xx bad): {result["unexpected"]}')
    print(f'latency: good p50 {result["good_p50_ms"]:.0f} ms, p99 {result["good_p99_ms"]:.0f} '
          f'ms; bad p50 {result["bad_p50_ms"]:.0f} ms, p99 {result["bad_p99_ms"]:.0f} ms')
    print(f'idle partial heads ({SOAK_IDLE_HEADS} at a time): '
          f'{", ".join(f"{s}: {n}" for s, n in sorted(result["idle_heads"].items()))}, '
          f'the longest held {result["idle_head_max_s"]:.1f} s')
    print(f'/healthz every {SOAK_PROBE_S:g} s: {result["healthz_probes"]} probes, p99 by tenth '
          f'of the time {", ".join(f"{p:.0f}" for p in result["healthz_p99_ms_by_window"])} '
          f'ms')
    print(f'resident memory (medians every {SOAK_SAMPLE_S} s): '
          f'{result["rss_after_warm_up_mb"]:.0f} MB after warm-up '
          f'({100 * SOAK_WARM_UP:.0f}-{100 * (SOAK_WARM_UP + SOAK_WINDOW):.0f} % of the time), '
          f'{result["rss_end_mb"]:.0f} MB at the end (the last {100 * SOAK_WINDOW:.0f} %, '
          f'{result["rss_growth_percent"]:+.1f} %), at most {result["rss_max_mb"]:.0f} MB; '
          f'server {"up" if result["server_survived"] else "DOWN"} to the end, exit status '
          f'{result["server_exit_status"]}')
    print('targets: ' + ', '.join(f'{name}: {"met" if met else "MISSED"}'
                                  for name, met in result['targets'].items()))


def run_soak(model, image_folder, clients, seconds):
    """soak in a temporary folder."""
    jpegs = kitti_jpegs(image_folder, count=1)
    with tempfile.TemporaryDirectory() as folder:
        return soak(model, jpegs, clients, seconds, folder)
