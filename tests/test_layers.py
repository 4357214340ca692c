"""The architecture README's "How the kit is built" states holds: every module of ``conformance``
belongs to one layer of its table, and imports only from its own layer or those listed above it
(imports point down). The table is read from the README, so the documentation and the code
cannot drift apart."""
import ast
import re

from suite_run import ROOT

PACKAGE = ROOT / "conformance"


def _layers() -> dict:
    """Module or package name -> the layer's index, from the README's table (top to bottom)."""
    readme = (ROOT / "README.md").read_text()
    section = readme[readme.index("## How the kit is built"):]
    table = section[section.index("| ground |"):].split("\n\n")[0]
    layers = {}
    for index, row in enumerate(table.splitlines()):
        named = row.split("|")[2].split("(")[0]   # "`forms/` (`protocol`, ...)": the package, not its modules
        layers.update({name.rstrip("/"): index for name in re.findall(r"`([\w/]+)`", named)})
    return layers


def _imported(path, tree) -> set:
    """The top-level ``conformance`` modules or packages that ``path`` imports."""
    here = path.relative_to(PACKAGE).parts[:-1]
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom) and node.level:
            base = list(here[:len(here) - (node.level - 1)]) + (node.module.split(".") if node.module else [])
            found.update(base[:1] if base else (alias.name for alias in node.names))
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("conformance"):
            parts = node.module.split(".")[1:]
            found.update(parts[:1] if parts else (alias.name for alias in node.names))
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names
                         if alias.name.startswith("conformance.") and alias.name.count("."))
    return found


def test_every_module_is_in_a_layer_and_imports_point_down():
    layers = _layers()
    unplaced, upward = [], []
    for path in sorted(PACKAGE.rglob("*.py")):
        top = path.relative_to(PACKAGE).parts[0].removesuffix(".py")
        if top == "__init__":
            continue
        if top not in layers:
            unplaced.append(top)
            continue
        for name in _imported(path, ast.parse(path.read_text())) - {top}:
            if layers.get(name, -1) > layers[top]:
                upward.append(f"{path.relative_to(ROOT)} imports {name}")
    assert not unplaced, f"modules in no layer of README's table: {sorted(set(unplaced))}"
    assert not upward, "imports that point up:\n" + "\n".join(upward)
