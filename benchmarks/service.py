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
from roadseg.data.datasets import IMAGE_EXTENSIONS
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


def soak_requests(jpeg):
    """The soak's mix: (name, method, path, httpx keyword arguments, good), the bad ones each
    a kind of request the service must refuse with a 4xx and survive."""
    pixels = np.asarray(Image.open(io.BytesIO(jpeg)).convert('RGB').resize((64, 32))).tolist()
    b64 = base64.b64encode(jpeg).decode()

    def body(data, kind='image/jpeg'):
        return {'content': data, 'headers': {'Content-Type': kind}}
    image = body(jpeg)
    predict = '/v1/models/fcn:predict'
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
    ]


def resident_mb(pid):
    """A process's resident memory now (VmRSS), in MB."""
    with open(f'/proc/{pid}/status') as f:
        return next(int(line.split()[1]) for line in f if line.startswith('VmRSS:')) / 1024


def soak(model, jpegs, clients, seconds, folder):
    """serve.py with `model` under `clients` threads sending soak_requests in turn for
    `seconds`: answers by request and status, 5xx and transport errors, p50/p99 latency of
    the good and the bad, and resident memory after warm-up against the end."""
    server = Server(model, os.path.join(folder, 'soak.log'))
    mix = soak_requests(jpegs[0])
    answers, lock, done = [], threading.Lock(), threading.Event()
    memory = []

    def client(offset):
        with httpx.Client(base_url=server.url, timeout=REQUEST_TIMEOUT_S) as http:
            i = offset
            while not done.is_set():
                name, method, path, kwargs, good = mix[i % len(mix)]
                i += 1
                start = time.perf_counter()
                try:
                    status = getattr(http, method)(path, **kwargs).status_code
                except httpx.HTTPError as e:
                    status = type(e).__name__
                with lock:
                    answers.append((name, good, status, time.perf_counter() - start))

    def sample():
        start = time.monotonic()
        while not done.wait(SOAK_SAMPLE_S):
            memory.append((time.monotonic() - start, resident_mb(server.process.pid)))

    threads = [threading.Thread(target=client, args=(n,)) for n in range(clients)]
    threads.append(threading.Thread(target=sample))
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
    return soak_summary(answers, memory, seconds, clients, alive, status)


def soak_summary(answers, memory, seconds, clients, alive, exit_status):
    """soak's figures from its (name, good, status, seconds) answers and (time, MB) samples."""
    by_request = {}
    for name, good, status, _ in answers:
        counts = by_request.setdefault(name, {'good': good, 'statuses': {}})
        counts['statuses'][str(status)] = counts['statuses'].get(str(status), 0) + 1
    statuses = [status for _, _, status, _ in answers]
    wrong = sum(1 for _, good, status, _ in answers
                if status != 200 and good or not good and not (isinstance(status, int) and
                                                               400 <= status < 500))
    settled = [mb for t, mb in memory if t >= SOAK_WARM_UP * seconds] or [float('nan')]
    after_warm_up = float(np.median([mb for t, mb in memory if SOAK_WARM_UP * seconds <= t <
                                     (SOAK_WARM_UP + SOAK_WINDOW) * seconds] or settled[:1]))
    end = float(np.median([mb for t, mb in memory if t >= (1 - SOAK_WINDOW) * seconds]
                          or settled[-1:]))

    def percentiles(good):
        times = [s for _, g, _, s in answers if g == good]
        return [float(np.percentile(times, q)) * 1e3 if times else float('nan')
                for q in (50, 99)]
    return {'seconds': seconds, 'clients': clients, 'requests': len(answers),
            'requests_per_s': len(answers) / seconds,
            'server_errors': sum(isinstance(s, int) and s >= 500 for s in statuses),
            'transport_errors': sum(not isinstance(s, int) for s in statuses),
            'unexpected': wrong, 'by_request': by_request,
            'good_p50_ms': percentiles(True)[0], 'good_p99_ms': percentiles(True)[1],
            'bad_p50_ms': percentiles(False)[0], 'bad_p99_ms': percentiles(False)[1],
            'rss_after_warm_up_mb': after_warm_up, 'rss_end_mb': end,
            'rss_max_mb': max(settled), 'rss_growth_percent': 100 * (end / after_warm_up - 1),
            'rss_samples': memory, 'server_survived': alive, 'server_exit_status': exit_status}


def print_soak(result, model):
    """The soak's figures as a table a person can check against the targets."""
    print(f'\nserve.py soak with {model}: {result["clients"]} clients, '
          f'{result["seconds"]:.0f} s, {result["requests"]} requests '
          f'({result["requests_per_s"]:.1f}/s), good and bad in turn')
    rows = [(name, 'good' if counts['good'] else 'bad',
             ', '.join(f'{status}: {n}' for status, n in sorted(counts['statuses'].items())))
            for name, counts in result['by_request'].items()]
    for line in cli.aligned(None, rows, left=3):
        print('  ' + line)
    print(f'5xx: {result["server_errors"]}, transport errors: {result["transport_errors"]}, '
          f'answers other than expected (200 good, 4xx bad): {result["unexpected"]}')
    print(f'latency: good p50 {result["good_p50_ms"]:.0f} ms, p99 {result["good_p99_ms"]:.0f} '
          f'ms; bad p50 {result["bad_p50_ms"]:.0f} ms, p99 {result["bad_p99_ms"]:.0f} ms')
    print(f'resident memory (medians every {SOAK_SAMPLE_S} s): '
          f'{result["rss_after_warm_up_mb"]:.0f} MB after warm-up '
          f'({100 * SOAK_WARM_UP:.0f}-{100 * (SOAK_WARM_UP + SOAK_WINDOW):.0f} % of the time), '
          f'{result["rss_end_mb"]:.0f} MB at the end (the last {100 * SOAK_WINDOW:.0f} %, '
          f'{result["rss_growth_percent"]:+.1f} %), at most {result["rss_max_mb"]:.0f} MB; '
          f'server {"up" if result["server_survived"] else "DOWN"} to the end, exit status '
          f'{result["server_exit_status"]}')
    print('targets: no 5xx, growth after warm-up within 10 %')


def run_soak(model, image_folder, clients, seconds):
    """soak in a temporary folder."""
    jpegs = kitti_jpegs(image_folder, count=1)
    with tempfile.TemporaryDirectory() as folder:
        return soak(model, jpegs, clients, seconds, folder)
