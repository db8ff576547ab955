"""The code's shape: the package never imports a top-level script, and no module imports another
in a circle (checked statically, from every import statement, including those inside functions)."""
import ast
import os

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


def test_requirements_txt_is_pyprojects_dependencies_and_its_extras_but_crf():
    import tomllib
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        project = tomllib.load(f)['project']
    with open(os.path.join(ROOT, 'requirements.txt')) as f:
        listed = {line.strip() for line in f if line.strip() and not line.startswith('#')}
    extras = project['optional-dependencies']
    assert listed == set(project['dependencies']).union(
        *(extras[name] for name in ('train', 'onnx', 'test')))


def test_each_extra_a_command_names_is_one_of_pyprojects_and_installs_the_package():
    """cli.EXTRAS tells a user which extra to install for a missing module: that extra exists,
    and it lists the package."""
    import tomllib

    from roadseg import cli
    with open(os.path.join(ROOT, 'pyproject.toml'), 'rb') as f:
        extras = tomllib.load(f)['project']['optional-dependencies']
    for module, (package, extra) in cli.EXTRAS.items():
        listed = [requirement.split('>')[0].split('<')[0].split('=')[0].lower()
                  for requirement in extras[extra]]
        assert package.lower() in listed, (module, extra, listed)


def test_the_librarys_own_settings_are_inside_the_package():
    """What the library reads by default, and the recipes --config takes by name (the
    checkout's configs/ links to them), are found from the package, so an installed roadseg
    has them too."""
    from roadseg import configs, crf
    from roadseg.data import classes
    assert os.path.realpath(os.path.join(ROOT, 'configs')) == configs.RECIPES
    for path in (classes.CLASS_DIR, crf.DEFAULT_PARAMETERS, configs.RECIPES):
        assert os.path.commonpath([path, configs.DIR]) == configs.DIR and os.path.exists(path)
    assert os.path.commonpath([configs.DIR, os.path.join(ROOT, 'roadseg')]) == \
        os.path.join(ROOT, 'roadseg')
