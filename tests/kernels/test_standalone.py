"""`pallas_kernels/` is a standalone library: none of its modules imports `interaction_jax`
(the model side, `interaction_jax/model/kernels.py`, registers the kernels it uses)."""

import ast
import pathlib

ROOT = pathlib.Path(__file__).resolve().parents[2] / "pallas_kernels"


def _imports(path: pathlib.Path) -> set[str]:
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            names.add(node.module)
    return names


def test_no_module_imports_interaction_jax():
    files = sorted(ROOT.glob("*.py"))
    assert files
    bad = {p.name: sorted(n for n in _imports(p) if n.split(".")[0] == "interaction_jax") for p in files}
    assert not {k: v for k, v in bad.items() if v}, bad
