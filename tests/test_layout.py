"""The package's shape, as the design brief and the family-adapter issue promise it: a family is named only by its
adapter and the registry (outside the remote code), no two modules import each other (directly or in a circle), and no
module is longer than 800 lines. A family added later is one modeling file, one adapter and one registry entry."""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Where the library lives outside the remote code (modeling/ is the family's own code by design).
LIBRARY_FOLDERS = {"flowcut_hf": "flowcut_hf", "export": "flowcut_hf.export", "hub_cards": "flowcut_hf.hub_cards"}
MAX_LINES = 800

# How code names a family: identifiers and string literals, in any spelling (classes, snake_case, CLI words, titles).
FAMILY_PATTERNS = {
    "LLaVA-1.5": [re.compile(r"Llava(?!Next|Onevision|OneVision)(?=[A-Z]|$)"),
                  re.compile(r"(?<![a-z])llava(?![-_ .]?(next|onevision|ov\b|v1\.6))(?![a-z])", re.I)],
    "LLaVA-NeXT": [re.compile(r"llava[-_ ]?next|llava-v1\.6", re.I)],
    "LLaVA-OneVision": [re.compile(r"onevision", re.I)],
    # "qwen2" alone is the language model's model_type (LLaVA-OneVision's decoder), not the Qwen-VL family.
    "Qwen2-VL / Qwen2.5-VL": [re.compile(r"qwen(?!2$)", re.I)],
}


def names_family(word: str, family: str) -> bool:
    return any(pattern.search(word) for pattern in FAMILY_PATTERNS[family])


def library_modules() -> dict[str, Path]:
    """Every module of the installed package outside modeling/, by its dotted name."""
    modules = {}
    for folder, package in LIBRARY_FOLDERS.items():
        for path in sorted((ROOT / folder).rglob("*.py")):
            relative = path.relative_to(ROOT / folder).with_suffix("")
            parts = [p for p in relative.parts if p != "__init__"]
            modules[".".join([package, *parts])] = path
    return modules


def docstring_nodes(tree: ast.AST) -> set[int]:
    nodes = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
                nodes.add(id(first.value))
    return nodes


def code_words(path: Path) -> set[str]:
    """Identifiers, imported module names and string literals of ``path``: comments and docstrings left out."""
    tree = ast.parse(path.read_text())
    docstrings = docstring_nodes(tree)
    words = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name):
            words.add(node.id)
        elif isinstance(node, ast.Attribute):
            words.add(node.attr)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            words.add(node.name)
        elif isinstance(node, ast.arg):
            words.add(node.arg)
        elif isinstance(node, ast.alias):
            words.update((node.name, node.asname or ""))
        elif isinstance(node, ast.ImportFrom):
            words.add(node.module or "")
        elif isinstance(node, ast.keyword) and node.arg:
            words.add(node.arg)
        elif isinstance(node, ast.Constant) and isinstance(node.value, str) and id(node) not in docstrings:
            words.add(node.value)
    return words


def modules_naming_each_family() -> dict[str, list[str]]:
    naming = defaultdict(list)
    for name, path in library_modules().items():
        if path.name == "__init__.py":
            continue
        words = code_words(path)
        for family in FAMILY_PATTERNS:
            if any(names_family(word, family) for word in words):
                naming[family].append(name)
    return naming


def imports_of(name: str, path: Path, known: set[str]) -> set[str]:
    """The package's modules that module ``name`` imports (at any level of its code)."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    tree = ast.parse(path.read_text())
    # Imports under `if TYPE_CHECKING:` are for type checkers only; they never run.
    type_only = {
        id(inner) for node in ast.walk(tree)
        if isinstance(node, ast.If) and getattr(node.test, "id", getattr(node.test, "attr", None)) == "TYPE_CHECKING"
        for child in node.body for inner in ast.walk(child)
    }
    found = set()
    for node in ast.walk(tree):
        if id(node) in type_only:
            continue
        if isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - node.level + 1]
                target = ".".join([*base, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            candidates = [target, *(f"{target}.{alias.name}" for alias in node.names)]
        elif isinstance(node, ast.Import):
            candidates = [alias.name for alias in node.names]
        else:
            continue
        found.update(candidate for candidate in candidates if candidate in known and candidate != name)
    return found


def test_each_family_is_named_only_by_its_adapter_and_the_registry():
    for family, modules in modules_naming_each_family().items():
        others = [m for m in modules if not m.startswith("flowcut_hf.families.") and m != "flowcut_hf.registry"]
        adapters = {m.split(".")[2] for m in modules if m.startswith("flowcut_hf.families.")}
        assert not others, f"{family} is named outside its adapter and the registry, in {others}"
        assert len(adapters) <= 1, f"{family} is named by several adapters: {sorted(adapters)}"


def test_no_two_modules_import_each_other():
    modules = library_modules()
    graph = {name: imports_of(name, path, set(modules)) for name, path in modules.items()}
    # A package's __init__ re-exporting its modules is how Python packages work, not a circle.
    graph = {name: {t for t in targets if not name.startswith(t + ".")} for name, targets in graph.items()}
    visiting, done, cycles = set(), set(), []

    def visit(node: str, stack: list[str]) -> None:
        visiting.add(node)
        for target in sorted(graph[node]):
            if target in visiting:
                cycles.append(stack[stack.index(target):] + [target] if target in stack else [node, target])
            elif target not in done:
                visit(target, [*stack, target])
        visiting.discard(node)
        done.add(node)

    for name in sorted(graph):
        if name not in done:
            visit(name, [name])
    assert not cycles, f"modules that import each other: {cycles[:5]}"


@pytest.mark.parametrize("folder", [*LIBRARY_FOLDERS, "modeling"])
def test_no_module_is_longer_than_800_lines(folder):
    long = {str(p.relative_to(ROOT)): n for p in (ROOT / folder).rglob("*.py") if (n := len(p.read_text().splitlines())) > MAX_LINES}
    assert not long, f"modules over {MAX_LINES} lines: {long}"


def test_every_package_folder_is_installed():
    """A package folder missing from pyproject.toml's list works in an editable install and is missing from a wheel."""
    import tomllib

    listed = set(tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["setuptools"]["packages"])
    found = {name for name, path in library_modules().items() if path.name == "__init__.py"} | {"flowcut_hf.modeling"}
    assert found <= listed, f"package folders missing from pyproject.toml: {sorted(found - listed)}"


def test_the_registry_entries_match_their_adapters():
    """An entry states what the command line needs without importing the adapter; it must say what the adapter is."""
    from flowcut_hf.family import FlowCutFamily
    from flowcut_hf.registry import REGISTRY, families

    for entry, family in zip(REGISTRY, families()):
        assert isinstance(family, FlowCutFamily) and family.entry is entry
        assert family.stock_model_class.__name__ == entry.model_class
        assert family.config_class.model_type == entry.model_type == family.model_type
        assert ("retain_ratio" in entry.amount_kinds) == (family.default_retain_ratio is not None)
        assert set(entry.methods) <= {"flowcut", "vflowopt"} and entry.methods
