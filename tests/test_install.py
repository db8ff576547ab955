"""The package as a user installs it: a wheel built from the tracked files, installed into a fresh
environment and run away from the source folder, with everything (this environment's packages
seen through it) and as the base install (its declared dependencies only, no TensorFlow)."""
import json
import os
import shutil
import subprocess
import sys
import time
import urllib.error
import urllib.request
from importlib import metadata

import imageio.v3 as iio
import numpy as np
import pytest
from packaging.requirements import Requirement

from benchmarks.service import free_port
from roadseg import console, zoo
from tests.conftest import ROOT, make_kitti

pytestmark = pytest.mark.slow


@pytest.fixture(scope='module')
def source(tmp_path_factory):
    """The tracked files only, as a clean clone has them."""
    if not os.path.exists(os.path.join(ROOT, '.git')):  # a folder, or a worktree's file
        pytest.skip('not a git checkout')
    source = tmp_path_factory.mktemp('source')
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split('\0')
    for name in filter(None, tracked):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), source / name)
    return source


@pytest.fixture(scope='module')
def wheel(source, tmp_path_factory):
    """A wheel of the tracked files."""
    dist = tmp_path_factory.mktemp('dist')
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '-q', '-w', str(dist), str(source)], check=True, timeout=300)
    (built,) = dist.glob('roadseg-*.whl')
    return built


def test_the_wheel_holds_the_package_and_its_data_and_nothing_of_the_checkout(wheel):
    """The shipped models, the page, the class files, the recipes with their records and
    py.typed travel in the wheel; the tests, benchmarks, docs and data do not."""
    import zipfile
    names = set(zipfile.ZipFile(wheel).namelist())
    for name in ('roadseg/py.typed', 'roadseg/serving/page.html', 'roadseg/configs/crf.json',
                 'roadseg/configs/classes/camvid11.json', 'roadseg/shipped/README.md',
                 'roadseg/configs/recipes/camvid_road_mobilenetv2.json',
                 'roadseg/configs/recipes/crossval/camvid_road_mobilenetv2.json',
                 *(f'roadseg/shipped/{model}/{part}' for model in zoo.SHIPPED
                   for part in ('model_int8.tflite', 'fcn.json', 'card.json', 'manifest.json'))):
        assert name in names, name
    tops = {name.split('/')[0] for name in names}
    assert {top for top in tops if not top.startswith('roadseg')} == set(), tops


def install(wheel, venv, *venv_flags):
    """A fresh virtual environment with the wheel installed (no dependencies); its python."""
    subprocess.run([sys.executable, '-m', 'venv', *venv_flags, str(venv)], check=True,
                   timeout=120)
    python = str(venv / 'bin' / 'python')
    subprocess.run([python, '-m', 'pip', 'install', '--no-deps', '--no-index', '-q', str(wheel)],
                   check=True, timeout=300)
    return python


def away_env():
    return {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}


def test_the_installed_package_finds_its_models_page_and_configs(wheel, tmp_path):
    """Installed with this environment's packages seen through it, the package finds everything
    it reads from the package when run away from the source folder: the shipped models whole
    (their manifests check), the service's page, the default config and the class files; every
    command answers --help."""
    venv = tmp_path / 'venv'
    python = install(wheel, venv, '--system-site-packages')
    away = tmp_path / 'elsewhere'
    away.mkdir()
    check = '''
import os, roadseg
from roadseg import files, zoo
from roadseg.serving.app import PAGE
from roadseg.data import classes
from roadseg.training import options
assert 'site-packages' in roadseg.__file__, roadseg.__file__
from importlib import metadata
assert metadata.version('roadseg') == roadseg.__version__, metadata.version('roadseg')
for name in zoo.SHIPPED:
    folder = os.path.dirname(zoo.resolve(name))
    assert files.manifest_problem(folder) is None, (name, files.manifest_problem(folder))
    assert os.path.isfile(os.path.join(folder, zoo.CARD))
assert os.path.isfile(os.path.join(zoo.DIR, 'README.md'))
assert open(PAGE).read().startswith('<!')
assert options.parse_args([]).training.epochs == 40  # main.py's defaults, in the fields
recipe = options.parse_args(['--config', 'camvid_road_mobilenetv2'])  # a recipe by name
assert recipe.run.crossval.startswith(os.path.dirname(roadseg.__file__)), recipe.run.crossval
assert classes.builtin('camvid11').num_classes == 11
assert os.path.isfile(os.path.join(os.path.dirname(roadseg.__file__), 'py.typed'))
assert roadseg.load('camvid-road').input_size == (352, 480)  # the Python API
print('ok')
'''
    env = away_env()
    done = subprocess.run([python, '-c', check], cwd=away, capture_output=True, text=True,
                          env=env, timeout=300)
    assert done.returncode == 0 and done.stdout.strip() == 'ok', done.stderr[-2000:]
    # Every user command is installed on the PATH and answers, away from the source folder.
    for name in console.NAMES:
        command = str(venv / 'bin' / f'roadseg-{name.replace("_", "-")}')
        helped = subprocess.run([command, '--help'], cwd=away, capture_output=True, text=True,
                                env=env, timeout=120)
        assert helped.returncode == 0 and 'usage:' in helped.stdout, (name, helped.stderr[-500:])
    # The shipped road model segments a street image with the installed command.
    iio.imwrite(away / 'street.png', np.full((60, 80, 3), 100, np.uint8))
    done = subprocess.run([str(venv / 'bin' / 'roadseg-predict'), 'street.png', '--output-dir',
                           'out'], cwd=away, capture_output=True, text=True, env=env,
                          timeout=300)
    assert done.returncode == 0 and (away / 'out' / 'street.png').is_file(), done.stderr[-2000:]


def base_distributions():
    """The installed distributions the base install brings: pyproject's dependencies and, in
    turn, theirs (with the extras asked for)."""
    import tomllib
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        todo = [Requirement(r) for r in tomllib.load(f)['project']['dependencies']]
    found, seen = {}, set()
    while todo:
        requirement = todo.pop()
        key = (requirement.name.lower().replace('_', '-'), frozenset(requirement.extras))
        if key in seen:
            continue
        seen.add(key)
        found[key[0]] = dist = metadata.distribution(requirement.name)
        for needed in map(Requirement, dist.requires or []):
            if not needed.marker or any(needed.marker.evaluate({'extra': extra})
                                        for extra in ('', *requirement.extras)):
                todo.append(needed)
    return found


def link_base_packages(folder):
    """`folder` holding links to the base distributions' files (their packages, modules and
    metadata), for a .pth file of the fresh environment: the base install made offline from
    what this environment has, with nothing else in reach."""
    folder.mkdir()
    for name, dist in base_distributions().items():
        assert dist.files is not None, f'{name} has no RECORD'
        for top in {f.parts[0] for f in dist.files}:
            if top == '..' or top.endswith('.pth') or top == '__pycache__':
                continue
            if not os.path.lexists(folder / top):
                os.symlink(dist.locate_file(top), folder / top)


def get(url):
    """(status, JSON body) of a GET, or None while nothing answers."""
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return response.status, json.load(response)
    except urllib.error.HTTPError as e:
        return e.code, None
    except OSError:
        return None


def test_the_base_install_predicts_evaluates_and_serves_without_tensorflow(wheel, source,
                                                                          tmp_path):
    """The wheel with only its declared dependencies, as `pip install roadseg` brings them: no
    TensorFlow. The API example, predict and evaluate run the shipped model, serve serves it
    under its name, pip finds nothing missing, and training, installed or the clone's main.py,
    says in one line which extra to install."""
    venv = tmp_path / 'venv'
    python = install(wheel, venv)
    link_base_packages(tmp_path / 'base')
    site = subprocess.run([python, '-c', 'import sysconfig; print(sysconfig.get_path("purelib"))'],
                          capture_output=True, text=True, check=True).stdout.strip()
    with open(os.path.join(site, 'base.pth'), 'w') as f:
        f.write(f'{tmp_path / "base"}\n')
    env, away = away_env(), tmp_path / 'elsewhere'
    away.mkdir()

    def run(*command, timeout=300):
        return subprocess.run(command, cwd=away, capture_output=True, text=True, env=env,
                              timeout=timeout)

    assert 'tensorflow' not in base_distributions()
    done = run(python, '-c', 'import tensorflow')
    assert done.returncode != 0 and "No module named 'tensorflow'" in done.stderr
    done = run(python, '-m', 'pip', 'check')
    assert done.returncode == 0, done.stdout + done.stderr
    api = ('import sys, numpy, roadseg\n'
           'road = roadseg.load("camvid-road")\n'
           'print(road.segment(numpy.zeros((30, 40, 3), numpy.uint8)).shape,'
           ' "tensorflow" in sys.modules)')
    done = run(python, '-c', api)
    assert done.returncode == 0 and done.stdout.split() == ['(30,', '40)', 'False'], done.stderr
    iio.imwrite(away / 'street.png', np.full((60, 80, 3), 100, np.uint8))
    done = run(str(venv / 'bin' / 'roadseg-predict'), 'street.png', '--output-dir', 'out')
    assert done.returncode == 0 and (away / 'out' / 'street.png').is_file(), done.stderr[-2000:]
    make_kitti(away / 'kitti')
    done = run(str(venv / 'bin' / 'roadseg-evaluate'), '--model', 'camvid-road', '--dataset',
               'kitti', '--data-dir', 'kitti', '--output-dir', 'scored')
    assert done.returncode == 0 and (away / 'scored' / 'confusion.png').is_file(), done.stderr
    for command in ([str(venv / 'bin' / 'roadseg-train')], [python, str(source / 'main.py')]):
        done = run(*command, '--data-dir', str(away), '--epochs', '1')
        (line,) = done.stderr.strip().splitlines()
        name = os.path.basename(command[-1])
        assert done.returncode == 2 and line.startswith(f'error: {name} needs TensorFlow'), line
        assert "pip install 'roadseg[train]'" in line

    url = f'http://127.0.0.1:{free_port()}'
    with open(tmp_path / 'serve.log', 'w') as log:
        server = subprocess.Popen([str(venv / 'bin' / 'roadseg-serve'), '--port',
                                   url.rsplit(':', 1)[1]], cwd=away, env=env, stdout=log,
                                  stderr=subprocess.STDOUT)
    try:
        deadline, answer = time.monotonic() + 120, None
        while answer is None and time.monotonic() < deadline and server.poll() is None:
            time.sleep(0.3)
            answer = get(f'{url}/v1/models/camvid-road')
        said = (tmp_path / 'serve.log').read_text()[-2000:]
        assert answer and answer[0] == 200, said
        assert answer[1]['model_version_status'][0]['state'] == 'AVAILABLE', answer
    finally:
        server.terminate()
        server.wait(timeout=60)
