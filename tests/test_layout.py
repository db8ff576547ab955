"""The code's shape: the package never imports a top-level script, and no module imports another
in a circle (checked statically, from every import statement, including those inside functions)."""
import ast
import os
import shutil
import subprocess
import sys

import imageio.v3 as iio
import numpy as np
import pytest

from roadseg import console
from tests.conftest import ROOT


def import_graph(root=ROOT):
    """{module: the project's modules it imports}: roadseg's and benchmarks' modules by dotted
    name and the top-level scripts by file name."""
    paths = {name[:-3]: os.path.join(root, name) for name in os.listdir(root)
             if name.endswith('.py')}
    for folder, _, names in [entry for package in ('roadseg', 'benchmarks')
                             for entry in os.walk(os.path.join(root, package))]:
        for name in names:
            if name.endswith('.py'):
                path = os.path.join(folder, name)
                module = os.path.relpath(path, root)[:-3].replace(os.sep, '.')
                paths[module.removesuffix('.__init__')] = path
    graph = {}
    for module, path in paths.items():
        with open(path) as f:
            tree = ast.parse(f.read())
        imported = set()
        for node in ast.walk(tree):
            if isinstance(node, ast.Import):
                imported.update(alias.name for alias in node.names)
            elif isinstance(node, ast.ImportFrom) and node.module:
                imported.add(node.module)
                imported.update(f'{node.module}.{alias.name}' for alias in node.names)
        graph[module] = {name for name in imported if name in paths and name != module}
    return graph


def cycles(graph):
    """The strongly connected components of more than one module (Tarjan's algorithm)."""
    index, low, stack, found = {}, {}, [], []

    def visit(node):
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in graph[node]:
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            component = []
            while not component or component[-1] != node:
                component.append(stack.pop())
            if len(component) > 1:
                found.append(sorted(component))
    for node in graph:
        if node not in index:
            visit(node)
    return found


def test_cycles_finds_a_circle_and_only_circles():
    assert cycles({'a': {'b'}, 'b': {'c'}, 'c': {'a'}, 'd': {'a'}}) == [['a', 'b', 'c']]
    assert cycles({'a': {'b'}, 'b': set(), 'c': {'a', 'b'}}) == []


def test_no_import_cycle_and_the_package_imports_no_script_nor_the_benchmarks():
    graph = import_graph()
    tools = {name for name in graph if not name.startswith('roadseg')}  # scripts, benchmarks
    assert {'main', 'helper', 'benchmark', 'benchmarks.service', 'roadseg.inference',
            'roadseg.model.network'} <= set(graph)
    assert cycles(graph) == []
    assert {module: graph[module] & tools for module in graph
            if module.startswith('roadseg') and graph[module] & tools} == {}


PROCESS_CALLS = {'system', 'popen', 'execv', 'execve', 'execl', 'execvp', 'spawnv', 'spawnl'}


def test_the_package_runs_no_script():
    """Starting a process is the tools' business (benchmarks/ runs predict.py and serve.py):
    no roadseg module imports subprocess or runpy, or calls os.system, os.popen, os.exec* or
    os.spawn*."""
    found = []
    for folder, _, names in os.walk(os.path.join(ROOT, 'roadseg')):
        for name in (n for n in names if n.endswith('.py')):
            path = os.path.join(folder, name)
            with open(path) as f:
                tree = ast.parse(f.read())
            for node in ast.walk(tree):
                modules = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                           [node.module] if isinstance(node, ast.ImportFrom) else [])
                found += [f'{path}: import {m}' for m in modules
                          if m and m.split('.')[0] in ('subprocess', 'runpy')]
                if isinstance(node, ast.Attribute) and node.attr in PROCESS_CALLS and \
                        isinstance(node.value, ast.Name) and node.value.id == 'os':
                    found.append(f'{path}: os.{node.attr}')
    assert found == []


def test_requirements_txt_is_pyprojects_dependencies_and_test_extra():
    import tomllib
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        project = tomllib.load(f)['project']
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        listed = {line.strip() for line in f if line.strip() and not line.startswith('#')}
    assert listed == set(project['dependencies']) | set(project['optional-dependencies']['test'])


def test_the_librarys_own_settings_are_inside_the_package():
    """configs/ holds only recipes to pass to --config; what the library reads by default is
    found from the package, so an installed roadseg has it too."""
    from roadseg import configs, crf
    from roadseg.data import classes
    for path in (classes.CLASS_DIR, crf.DEFAULT_PARAMETERS):
        assert os.path.commonpath([path, configs.DIR]) == configs.DIR and os.path.exists(path)
    assert os.path.commonpath([configs.DIR, os.path.join(ROOT, 'roadseg')]) == \
        os.path.join(ROOT, 'roadseg')


@pytest.mark.slow
def test_the_installed_package_finds_its_models_page_and_configs(tmp_path):
    """A wheel of the project, installed into a fresh environment (this one's packages seen
    through it, the project's own not), finds everything it reads from the package when run
    away from the source folder: the shipped models whole (their manifests check), the
    service's page, the default config and the class files."""
    if not os.path.exists(os.path.join(ROOT, '.git')):  # a folder, or a worktree's file
        pytest.skip('not a git checkout')
    source = tmp_path / 'source'  # the tracked files only, as a clean clone has them
    tracked = subprocess.run(['git', 'ls-files', '-z'], cwd=ROOT, capture_output=True,
                             check=True).stdout.decode().split('\0')
    for name in filter(None, tracked):
        if os.path.isfile(os.path.join(ROOT, name)):
            os.makedirs(source / os.path.dirname(name), exist_ok=True)
            shutil.copy2(os.path.join(ROOT, name), source / name)
    subprocess.run([sys.executable, '-m', 'pip', 'wheel', '--no-deps', '--no-build-isolation',
                    '-q', '-w', str(tmp_path / 'dist'), str(source)], check=True, timeout=300)
    (wheel,) = (tmp_path / 'dist').glob('roadseg-*.whl')
    venv = tmp_path / 'venv'
    subprocess.run([sys.executable, '-m', 'venv', '--system-site-packages', str(venv)],
                   check=True, timeout=120)
    python = str(venv / 'bin' / 'python')
    subprocess.run([python, '-m', 'pip', 'install', '--no-deps', '-q', str(wheel)], check=True,
                   timeout=300)
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
assert classes.builtin('camvid11').num_classes == 11
assert os.path.isfile(os.path.join(os.path.dirname(roadseg.__file__), 'py.typed'))
assert roadseg.load('camvid-road').input_size == (352, 480)  # the Python API
print('ok')
'''
    env = {k: v for k, v in os.environ.items() if k != 'PYTHONPATH'}
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
