"""The import graph against ARCHITECTURE.md: no module circles, no import against the layer order, every module
mapped. The document is the source of truth: its `## Layers` list and `## Module map` table are parsed here."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = "tokenmill"
LAYER_LINE = re.compile(r"^\d+\.\s+([\w ]+):\s+(.+)$")
MAP_ROW = re.compile(r"^\|\s*`([^`]+)`\s*\|")


def module_files(root: Path) -> dict[str, Path]:
    """Dotted module name → file, for every .py under the package (a package is its __init__.py)."""
    modules = {}
    for path in sorted((root / PACKAGE).rglob("*.py")):
        parts = list(path.relative_to(root).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        modules[".".join(parts)] = path
    return modules


def imported_modules(module: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that `module` imports anywhere in its file (top level, functions, TYPE_CHECKING),
    relative imports resolved; `from package import name` counts as importing the submodule when one exists."""
    is_package = path.name == "__init__.py"
    targets = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
        if isinstance(node, ast.Import):
            targets.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                here = module.split(".") if is_package else module.split(".")[:-1]
                base_parts = here[:len(here) - (node.level - 1)]
                base = ".".join(base_parts + ([node.module] if node.module else []))
            else:
                base = node.module or ""
            for alias in node.names:
                submodule = f"{base}.{alias.name}"
                targets.add(submodule if submodule in known else base)
    return {target for target in targets if target in known and target != module}


def import_graph(root: Path) -> dict[str, set[str]]:
    files = module_files(root)
    return {module: imported_modules(module, path, set(files)) for module, path in files.items()}


def import_cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index, low, on_stack, stack, cycles = {}, {}, set(), [], []
    for start in sorted(graph):
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    cycles.append(sorted(component))
    return cycles


def section(text: str, title: str) -> list[str]:
    lines = text.splitlines()
    start = lines.index(f"## {title}") + 1
    end = next((i for i in range(start, len(lines)) if lines[i].startswith("## ")), len(lines))
    return lines[start:end]


def documented_layers(text: str) -> list[tuple[str, list[str]]]:
    """[(layer name, [path or folder/ ...]), ...] from bottom to top, as `## Layers` lists them."""
    layers = []
    for line in section(text, "Layers"):
        match = LAYER_LINE.match(line.strip())
        if match:
            layers.append((match[1], re.findall(r"`([^`]+)`", match[2])))
    return layers


def documented_modules(text: str) -> set[str]:
    return {match[1] for line in section(text, "Module map") if (match := MAP_ROW.match(line))}


def layer_of(path: str, layers: list[tuple[str, list[str]]]) -> int | None:
    """The index of the layer naming this file or its closest enclosing folder."""
    best, best_length = None, -1
    for position, (_, entries) in enumerate(layers):
        for entry in entries:
            matches = path.startswith(entry) if entry.endswith("/") else path == entry
            if matches and len(entry) > best_length:
                best, best_length = position, len(entry)
    return best


def relative_path(module: str, files: dict[str, Path]) -> str:
    return files[module].relative_to(ROOT).as_posix()


@pytest.fixture(scope="module")
def architecture() -> str:
    return (ROOT / "ARCHITECTURE.md").read_text(encoding="utf-8")


@pytest.fixture(scope="module")
def graph() -> dict[str, set[str]]:
    return import_graph(ROOT)


def test_no_import_cycles(graph):
    cycles = import_cycles(graph)
    assert not cycles, "modules importing each other in a circle: " + "; ".join(" ↔ ".join(c) for c in cycles)


def test_every_module_belongs_to_exactly_one_documented_layer(architecture):
    layers = documented_layers(architecture)
    assert len(layers) >= 2, "ARCHITECTURE.md's `## Layers` section lists no layers"
    files = module_files(ROOT)
    unplaced = [relative_path(m, files) for m in files if layer_of(relative_path(m, files), layers) is None]
    assert not unplaced, f"modules in no layer of ARCHITECTURE.md: {unplaced}"


def test_no_import_runs_up_the_layers(architecture, graph):
    layers = documented_layers(architecture)
    files = module_files(ROOT)
    upward = []
    for module, targets in sorted(graph.items()):
        own = layer_of(relative_path(module, files), layers)
        for target in sorted(targets):
            theirs = layer_of(relative_path(target, files), layers)
            if own is not None and theirs is not None and theirs > own:
                upward.append(f"{module} ({layers[own][0]}) imports {target} ({layers[theirs][0]})")
    assert not upward, "imports against the layer order of ARCHITECTURE.md:\n" + "\n".join(upward)


def test_module_map_covers_every_module_and_nothing_else(architecture):
    files = {path.relative_to(ROOT).as_posix() for path in module_files(ROOT).values()}
    mapped = documented_modules(architecture)
    assert not files - mapped, f"modules missing from ARCHITECTURE.md's module map: {sorted(files - mapped)}"
    assert not mapped - files, f"module map entries with no such file: {sorted(mapped - files)}"


# ---- the checker itself, on a package written for the purpose ----

def write_package(root: Path, files: dict[str, str]) -> None:
    for name, source in files.items():
        path = root / PACKAGE / name
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(source, encoding="utf-8")


def test_checker_sees_relative_and_function_level_imports_and_their_circle(tmp_path):
    write_package(tmp_path, {
        "__init__.py": "",
        "low/__init__.py": "",
        "low/reader.py": "def read():\n    from ..high import builder\n",
        "high/__init__.py": "",
        "high/builder.py": "from ..low.reader import read\nimport tokenmill.low\n",
    })
    graph = import_graph(tmp_path)
    assert graph["tokenmill.low.reader"] == {"tokenmill.high.builder"}
    assert graph["tokenmill.high.builder"] == {"tokenmill.low.reader", "tokenmill.low"}
    assert import_cycles(graph) == [["tokenmill.high.builder", "tokenmill.low.reader"]]


def test_checker_reads_layers_and_map_from_the_document():
    text = ("## Layers\n\n1. base: `tokenmill/a.py`, `tokenmill/pkg/`\n2. top: `tokenmill/pkg/top.py`\n\n"
            "## Module map\n\n| module | holds |\n|---|---|\n| `tokenmill/a.py` | a |\n")
    layers = documented_layers(text)
    assert [name for name, _ in layers] == ["base", "top"]
    assert layer_of("tokenmill/pkg/low.py", layers) == 0
    assert layer_of("tokenmill/pkg/top.py", layers) == 1  # the closer entry wins
    assert layer_of("tokenmill/other.py", layers) is None
    assert documented_modules(text) == {"tokenmill/a.py"}
