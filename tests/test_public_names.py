"""What each package and module promises in ``__all__`` is what it holds (as httpx's
``tests/test_exported_members.py`` checks for httpx).

A subpackage's ``__all__`` names its public modules, so that ``docs/DESIGN.md``'s layout, the
package and this list cannot drift apart without a failing test; importing a subpackage stays
cheap (``tools`` does not pull in ``cryptography`` for ``replay``). A module's ``__all__`` names
exactly the public functions and classes it defines, and nothing it only imports: every public
name has one home, and anything else is private by its leading underscore.
"""

from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import pytest

import webhook
from webhook.errors import SentinelError

PACKAGE = Path(webhook.__file__).parent
SUBPACKAGES = sorted(info.name for info in pkgutil.iter_modules([str(PACKAGE)]) if info.ispkg)
MODULES = sorted(
    info.name
    for info in pkgutil.walk_packages([str(PACKAGE)], prefix="webhook.")
    if not info.ispkg and not info.name.rsplit(".", 1)[1].startswith("_")
)


def _top_level(module: str) -> tuple[set[str], set[str]]:
    """(public functions and classes defined at top level, every name bound at top level)."""
    path = PACKAGE.parent.joinpath(*module.split(".")).with_suffix(".py")
    tree = ast.parse(path.read_text(encoding="utf-8"))
    public: set[str] = set()
    bound: set[str] = set()
    for node in tree.body:
        if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef):
            bound.add(node.name)
            if not node.name.startswith("_"):
                public.add(node.name)
        elif isinstance(node, ast.Assign):
            bound.update(t.id for t in node.targets if isinstance(t, ast.Name))
        elif isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name):
            bound.add(node.target.id)
    return public, bound


def test_the_package_is_grouped_into_the_documented_rooms() -> None:
    assert SUBPACKAGES == ["core", "detect", "inputs", "kube", "serve", "sinks", "tail", "tools"]


@pytest.mark.parametrize("name", SUBPACKAGES)
def test_a_subpackage_lists_its_public_modules(name: str) -> None:
    package = importlib.import_module(f"webhook.{name}")
    modules = sorted(
        info.name for info in pkgutil.iter_modules(package.__path__) if not info.name.startswith("_")
    )
    assert sorted(package.__all__) == modules
    assert package.__doc__, f"webhook.{name} says in its docstring what it holds"


@pytest.mark.parametrize("module", MODULES)
def test_a_module_lists_exactly_the_public_names_it_defines(module: str) -> None:
    imported = importlib.import_module(module)
    exported = getattr(imported, "__all__", None)
    assert exported is not None, f"{module} has no __all__"
    public, bound = _top_level(module)
    assert len(set(exported)) == len(exported), f"{module}.__all__ repeats a name"
    assert set(exported) <= bound, f"{module}.__all__ names what it does not define"
    assert public <= set(exported), f"{module} defines public names missing from __all__"
    for name in exported:
        assert hasattr(imported, name)


@pytest.mark.parametrize("module", MODULES)
def test_every_error_defined_here_is_a_sentinel_error(module: str) -> None:
    """One base class: ``except SentinelError`` (or one of its kinds) catches all we raise."""
    imported = importlib.import_module(module)
    errors = [
        value
        for value in vars(imported).values()
        if isinstance(value, type) and issubclass(value, BaseException) and value.__module__ == module
    ]
    for error in errors:
        assert issubclass(error, SentinelError), f"{module}.{error.__name__} is not a SentinelError"
