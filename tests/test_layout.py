"""The shape of the repository: modules named for one thing each, imported one way, within their budgets."""
import ast

from conftest import REPO

MODULES = {p.stem: p for p in REPO.glob('*.py')}
# ~350 lines at most for any module; model.py and train.py keep nanoGPT's budgets and its density
BUDGET = {'model': 320, 'train': 350}
LONG_LINES = 20  # lines over 100 characters allowed in model.py and in train.py


def project_imports(path):
    """[(module imported, whether outside every function and class)] of the repository's own modules in
    path: a script may import a module under a module-level `if` (sample.py's image helpers)."""
    tree = ast.parse(path.read_text(encoding='utf-8'))
    inner = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef))
             for n in ast.walk(f)}
    top = {id(n) for n in ast.walk(tree)} - inner
    found = []
    for node in ast.walk(tree):
        names = ([a.name for a in node.names] if isinstance(node, ast.Import) else
                 [node.module or ''] if isinstance(node, ast.ImportFrom) and not node.level else [])
        for name in names:
            if name.split('.')[0] in MODULES or name.startswith('data.'):
                found.append((name.split('.')[0] if name.split('.')[0] in MODULES else name, id(node) in top))
    return found


def test_no_import_circle_and_no_hidden_project_import():
    graph = {}
    for name, path in MODULES.items():
        imports = project_imports(path)
        hidden = [m for m, at_top in imports if not at_top]
        assert not hidden, f"{name}.py imports {hidden} inside a function or block: import at the top"
        graph[name] = {m for m, _ in imports if m in MODULES}
    scripts = {'train', 'sample', 'eval', 'export', 'bench'}
    assert not any(graph[m] & scripts for m in graph), "a module imports a script (a script runs on import)"

    def visit(node, trail):
        assert node not in trail, f"import circle: {' -> '.join(trail[trail.index(node):] + [node])}"
        for nxt in graph[node]:
            visit(nxt, trail + [node])
    for name in graph:
        visit(name, [])


def test_a_circle_is_found(tmp_path, monkeypatch):
    """The check above can fail: two modules that import each other are caught."""
    (tmp_path / 'a.py').write_text('import b\n')
    (tmp_path / 'b.py').write_text('def f():\n    import a\n')
    monkeypatch.setattr('test_layout.MODULES', {'a': tmp_path / 'a.py', 'b': tmp_path / 'b.py'})
    assert project_imports(tmp_path / 'b.py') == [('a', False)]
    try:
        test_no_import_circle_and_no_hidden_project_import()
    except AssertionError as e:
        assert 'b.py imports' in str(e)
    else:
        raise AssertionError("a hidden import was not found")


def test_modules_within_their_budgets():
    for name, path in MODULES.items():
        lines = path.read_text(encoding='utf-8').splitlines()
        assert len(lines) <= BUDGET.get(name, 350), f"{name}.py has {len(lines)} lines"
        if name in BUDGET:
            long = [i + 1 for i, line in enumerate(lines) if len(line) > 100]
            assert len(long) <= LONG_LINES, f"{name}.py has {len(long)} lines over 100 characters: {long}"
