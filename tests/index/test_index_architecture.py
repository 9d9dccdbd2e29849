"""index/ is a facade over parts: no import cycle, parts never import the facade, ``add`` opens the index once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from index_corpora import write_good_images

import index.commit
from index import PrivateIndex, build_index
from index.shard import Shard

PACKAGE = Path(index.commit.__file__).parent
LAZY_ALLOWED = {"index._torchvision_compat"}  # a side-effect shim imported before open_clip, not a cycle dodge


def _imports(path: Path) -> tuple[set[str], set[str]]:
    """(module-level index.* imports, function-level index.* imports) of one module."""
    tree = ast.parse(path.read_text())
    top, nested = set(), set()

    def names(node: ast.AST) -> set[str]:
        if isinstance(node, ast.Import):
            return {a.name for a in node.names if a.name.startswith("index")}
        if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "index":
            if node.module == "index":
                return {f"index.{a.name}" for a in node.names if (PACKAGE / f"{a.name}.py").exists()}
            return {node.module}
        return set()

    for node in tree.body:
        top |= names(node)
    for node in ast.walk(tree):
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
            for inner in ast.walk(node):
                nested |= names(inner)
    return top, nested


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(PACKAGE.glob("*.py")):
        if path.stem == "__init__":
            continue
        top, nested = _imports(path)
        assert not (nested - LAZY_ALLOWED), f"{path.name} imports {nested - LAZY_ALLOWED} inside a function"
        graph[f"index.{path.stem}"] = {m for m in top if m != "index" and m != f"index.{path.stem}"}
    return graph


def test_index_modules_have_no_import_cycle() -> None:
    graph = _graph()
    state: dict[str, int] = {}

    def visit(node: str, trail: list[str]) -> None:
        state[node] = 1
        for dep in graph.get(node, ()):
            if state.get(dep) == 1:
                pytest.fail("import cycle: " + " -> ".join([*trail, node, dep]))
            if dep not in state:
                visit(dep, [*trail, node])
        state[node] = 2

    for node in graph:
        if node not in state:
            visit(node, [])


def test_parts_never_import_the_facade() -> None:
    importers = [name for name, deps in _graph().items() if "index.private_index" in deps]
    assert importers == []
    assert {"index.commit"} <= _graph()["index.build"] and {"index.commit"} <= _graph()["index.removal"]


def test_add_opens_the_index_once(tmp_path: Path, tiny_model: str, monkeypatch: pytest.MonkeyPatch) -> None:
    write_good_images(tmp_path / "a", 6)
    write_good_images(tmp_path / "b", 6, start=50)
    build_index(tmp_path / "a", tmp_path / "ix", shard="a", model=tiny_model, progress=False)
    build_index(tmp_path / "b", tmp_path / "ix", shard="b", progress=False)
    idx = PrivateIndex.open(tmp_path / "ix")
    reads, shard_views = [], []
    real_read = index.commit.read_top_manifest

    class CountingShard(Shard):
        def __init__(self, *args, **kwargs) -> None:
            shard_views.append(args[1])
            super().__init__(*args, **kwargs)

    monkeypatch.setattr(index.commit, "read_top_manifest", lambda path: reads.append(path) or real_read(path))
    monkeypatch.setattr(index.commit, "Shard", CountingShard)
    write_good_images(tmp_path / "c", 3, start=90)
    report = idx.add(tmp_path / "c", shard="a")
    assert report.added == 3 and idx.info()["records"] == 15
    assert len(reads) == 1  # re-read once under the writer lock, nothing else
    assert shard_views == ["a"]  # only the new generation gets a view; shard 'b' keeps its view
    assert idx.shard("a").num_records == 9
