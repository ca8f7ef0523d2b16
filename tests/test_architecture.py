"""The package's layers point down only, with no import cycle (issue 10 item 4).

The import graph of bitconv/ is read with `ast` (nothing is imported): every `import` / `from ... import`, at module
level, under `if TYPE_CHECKING:` and inside functions. Each module gets a layer from `LAYERS` (longest prefix wins):

    0 core          errors, dtypes, tensors, naming, JSON side files, pickle refusal, allocator
    1 formats       safetensors, GGUF container, Nanotron format (bytes on disk)
    2 quant/layouts ternarization, the layout registry, TL1/TL2 kernel tiling
    3 sources       open_source, Checkpoint, per-format readers, Hub download, config checks
    4 sinks/pipeline output writers, plan -> stream, atomic outputs
    5 verify/describe/publish
    6 cli/demo      the command line, the demo and the tiny-model generator

A module may import its own layer or lower ones. An import inside a function is allowed only in bitconv/cli/ or for a
lazily loaded heavy third-party package (`LAZY_OK`); typer and rich are imported only under bitconv/cli/.
"""

from __future__ import annotations

import ast
from dataclasses import dataclass
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1] / "bitconv"

LAYER_NAMES = ("core", "formats", "quant/layouts", "sources", "sinks/pipeline", "verify/describe/publish", "cli/demo")
LAYERS: dict[str, int] = {
    "bitconv": 0,  # the package root holds only __version__
    "bitconv.core": 0,
    "bitconv.formats": 1,
    "bitconv.quant": 2, "bitconv.torchsum": 2, "bitconv.layouts": 2,
    "bitconv.sources": 3,
    "bitconv.sinks": 4, "bitconv.pipeline": 4, "bitconv.report": 4, "bitconv.output": 4, "bitconv.memory": 4,
    "bitconv.verify": 5, "bitconv.describe": 5, "bitconv.publish": 5,
    "bitconv.cli": 6, "bitconv.api": 6, "bitconv.__main__": 6, "bitconv._entry": 6, "bitconv.demo": 6,
    "bitconv.tiny": 6,
}
LAZY_OK = frozenset({"torch", "transformers", "gguf", "huggingface_hub", "httpx2", "sentencepiece", "tokenizers",
                     "llama_cpp"})  # llama_cpp: the optional runtime extra, imported only by `verify --runtime`
CLI_ONLY = frozenset({"typer", "rich", "click"})
# front doors that import the library only when called, so `import bitconv` and `bitconv --help` stay fast: the
# console entry point (installs the Ctrl-C handler first), the package root's lazy `bitconv.pack(...)` and the API
LAZY_FRONTS = frozenset({"bitconv._entry", "bitconv", "bitconv.api"})


@dataclass(frozen=True)
class Import:
    src: str  # importing module
    target: str  # imported module (bitconv.x.y, or the top-level name of a third-party package)
    path: str  # relative to the folder holding the package, e.g. bitconv/core/errors.py
    line: int
    in_function: bool


def modules(root: Path) -> dict[str, Path]:
    """Dotted module name -> file, for every .py under `root` (a package directory named like the package)."""
    out = {}
    for p in sorted(root.rglob("*.py")):
        parts = list(p.relative_to(root.parent).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = p
    return out


def _targets(node: ast.Import | ast.ImportFrom, mod: str, is_pkg: bool, known: dict[str, Path]) -> list[str]:
    if isinstance(node, ast.Import):
        return [a.name for a in node.names]
    if node.level:
        base = mod.split(".")[: len(mod.split(".")) - (node.level - (1 if is_pkg else 0))]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    # `from pkg import name`: an edge to the submodule pkg.name when there is one, else to pkg itself
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in known else prefix for a in node.names]


def imports(root: Path) -> list[Import]:
    known = modules(root)
    out = []
    for mod, path in known.items():
        tree = ast.parse(path.read_text(encoding="utf-8"), str(path))
        in_func = {id(n) for f in ast.walk(tree) if isinstance(f, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
                   for n in ast.walk(f) if isinstance(n, (ast.Import, ast.ImportFrom))}
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                rel = path.relative_to(root.parent).as_posix()
                if mod == root.name and id(node) in in_func:
                    continue  # the package root's lazy `bitconv.pack(...)` (module __getattr__) is its public face
                for t in _targets(node, mod, path.name == "__init__.py", known):
                    out.append(Import(mod, t, rel, node.lineno, id(node) in in_func))
    return out


def layer_of(mod: str) -> int | None:
    if mod in LAYERS:
        return LAYERS[mod]
    parts = mod.split(".")
    for n in range(len(parts) - 1, 1, -1):  # a folder's entry covers its modules; the package root only itself
        if ".".join(parts[:n]) in LAYERS:
            return LAYERS[".".join(parts[:n])]
    return None


def _internal(imp: Import, pkg: str) -> bool:
    return imp.target == pkg or imp.target.startswith(pkg + ".")


def _where(imp: Import) -> str:
    return f"{imp.path}:{imp.line}"


def unlayered(root: Path) -> list[str]:
    return [m for m in modules(root) if layer_of(m) is None]


def upward(root: Path) -> list[str]:
    out = []
    for imp in imports(root):
        if not _internal(imp, root.name):
            continue
        a, b = layer_of(imp.src), layer_of(imp.target)
        if a is not None and b is not None and b > a:
            out.append(f"{_where(imp)}: {imp.src} (layer {a} {LAYER_NAMES[a]}) imports {imp.target} "
                       f"(layer {b} {LAYER_NAMES[b]})")
    return out


def cycles(root: Path) -> list[list[str]]:
    """Strongly connected components with more than one module (or a module importing itself)."""
    graph: dict[str, set[str]] = {m: set() for m in modules(root)}
    for imp in imports(root):
        if imp.target in graph:
            graph[imp.src].add(imp.target)
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:  # Tarjan
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1 or v in graph[v]:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def late_imports(root: Path) -> list[str]:
    """Imports inside functions that are neither in cli/ nor of a lazily loaded heavy third-party package."""
    out = []
    for imp in imports(root):
        if not imp.in_function or imp.src.startswith(f"{root.name}.cli") or imp.src in LAZY_FRONTS:
            continue  # the CLI, the console entry point and the Python API load the library lazily (it imports torch)
        if _internal(imp, root.name) or imp.target.split(".")[0] not in LAZY_OK:
            out.append(f"{_where(imp)}: {imp.src} imports {imp.target} inside a function")
    return out


def cli_only_outside_cli(root: Path) -> list[str]:
    return [f"{_where(imp)}: {imp.src} imports {imp.target}" for imp in imports(root)
            if imp.target.split(".")[0] in CLI_ONLY and not imp.src.startswith(f"{root.name}.cli")]


# ------------------------------------------------------------------------------------------------------ the package


def test_every_module_has_a_layer():
    assert modules(ROOT), ROOT
    assert unlayered(ROOT) == [], "add the new module's folder to LAYERS in tests/test_architecture.py"


def test_layers_point_down():
    assert upward(ROOT) == []


def test_no_import_cycle():
    assert cycles(ROOT) == []


def test_imports_inside_functions_only_lazy_heavy_dependencies():
    assert late_imports(ROOT) == []


def test_typer_and_rich_only_in_cli():
    assert cli_only_outside_cli(ROOT) == []


# ------------------------------------------------------------------------------------------------------ the checker


@pytest.fixture
def fake(tmp_path: Path):
    """A throwaway package named `bitconv` with one module per layer, clean until a test breaks it."""
    root = tmp_path / "bitconv"
    files = {
        "__init__.py": "",
        "core/__init__.py": "", "core/errors.py": "X = 1\n",
        "formats/__init__.py": "", "formats/safetensors.py": "from bitconv.core.errors import X\n",
        "layouts/__init__.py": "from bitconv.layouts import hf\n",
        "layouts/hf.py": "from bitconv.core import errors\n",
        "sources/__init__.py": "from bitconv.formats import safetensors\nfrom .gguf import Y\n",
        "sources/gguf.py": "Y = 2\n\ndef f():\n    import torch\n    return torch\n",
        "cli/__init__.py": "import typer\n\ndef main():\n    from bitconv.sources import gguf\n    return gguf\n",
    }
    for rel, text in files.items():
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text(text)
    return root


def test_checker_passes_a_clean_tree(fake: Path):
    assert (unlayered(fake), upward(fake), cycles(fake), late_imports(fake), cli_only_outside_cli(fake)) == \
        ([], [], [], [], [])
    edges = {(i.src, i.target) for i in imports(fake)}
    assert ("bitconv.sources", "bitconv.sources.gguf") in edges  # relative import resolved
    assert ("bitconv.sources", "bitconv.formats.safetensors") in edges  # `from pkg import submodule`


def test_checker_finds_an_upward_import(fake: Path):
    (fake / "formats/safetensors.py").write_text("def f():\n    from bitconv.sources import gguf\n    return gguf\n")
    assert upward(fake) == ["bitconv/formats/safetensors.py:2: bitconv.formats.safetensors (layer 1 formats) imports "
                            "bitconv.sources.gguf (layer 3 sources)"]
    assert late_imports(fake) == ["bitconv/formats/safetensors.py:2: bitconv.formats.safetensors imports "
                                  "bitconv.sources.gguf inside a function"]


def test_checker_finds_a_cycle(fake: Path):
    (fake / "layouts/hf.py").write_text("from bitconv.layouts import Layout\n")  # the package imports hf too
    assert cycles(fake) == [["bitconv.layouts", "bitconv.layouts.hf"]]
    assert upward(fake) == []


def test_checker_finds_typer_outside_cli_and_unlayered_modules(fake: Path):
    (fake / "core/render.py").write_text("from rich.console import Console\n")
    (fake / "extra.py").write_text("")
    assert cli_only_outside_cli(fake) == ["bitconv/core/render.py:1: bitconv.core.render imports rich.console"]
    assert unlayered(fake) == ["bitconv.extra"]


def test_checker_allows_only_heavy_lazy_imports(fake: Path):
    (fake / "sources/gguf.py").write_text("def f():\n    import json\n    import huggingface_hub\n")
    assert late_imports(fake) == ["bitconv/sources/gguf.py:2: bitconv.sources.gguf imports json inside a function"]


# ------------------------------------------------------------------------------------------------ layout facts

# The GGML type names of the packed ternary layouts. Only the layout files (and the GGUF container code, which sizes
# and names the types it reads) may spell them; everything else derives its tables from the layout registry.
GGML_TERNARY_NAMES = frozenset({"I2_S", "TL1", "TL2", "TL2_42", "TQ1_0", "TQ2_0", "IQ1_BN", "IQ2_BN", "IQ2_BN_R4"})
FACT_HOMES = ("layouts/", "formats/gguf/")


def ggml_names_outside_layouts(root: Path, names: frozenset[str] | set[str] = GGML_TERNARY_NAMES) -> list[str]:
    """`path:line: 'NAME'` for every string constant naming a GGML ternary type outside the layout/container code
    (docstrings and f-string prose included: a table written out as text is still a second home)."""
    found = []
    for path in sorted(root.rglob("*.py")):
        rel = path.relative_to(root).as_posix()
        if rel.startswith(FACT_HOMES):
            continue
        tree = ast.parse(path.read_text(encoding="utf-8"))
        for node in ast.walk(tree):
            if isinstance(node, ast.Constant) and isinstance(node.value, str) and node.value in names:
                found.append(f"{rel}:{node.lineno}: {node.value!r}")
    return found


def test_ggml_type_names_live_only_in_layouts():
    from bitconv.layouts import ggml_type_layouts

    assert GGML_TERNARY_NAMES <= set(ggml_type_layouts())  # every name here is one a registered layout declares
    assert ggml_names_outside_layouts(ROOT, GGML_TERNARY_NAMES | set(ggml_type_layouts())) == []


def test_ggml_type_name_check_fails_on_a_table_outside_layouts(tmp_path):
    pkg = tmp_path / "bitconv"
    (pkg / "layouts").mkdir(parents=True)
    (pkg / "layouts" / "x.py").write_text('T = "I2_S"\n')
    (pkg / "demo.py").write_text('STEPS = {"gguf-i2-s": "I2_S"}\n')
    assert ggml_names_outside_layouts(pkg) == ["demo.py:1: 'I2_S'"]
