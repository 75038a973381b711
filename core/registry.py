"""Solution registry: plugins register recipe functions by decorator (like timm's @register_model).

    @register                                   # a root of the lineage
    def resnet34_pcen_sam_8fold() -> Recipe: ...

    @register(parent="resnet34_pcen_sam_8fold") # a child: receives its parent's recipe
    def resnet34_pcen_sam_8f_200e(parent: Recipe) -> Recipe:
        return parent.derive(frontend=dict(n_mels=128))

    @register(parent="x", derives_from="y")     # lineage parent x (ordering, tables, ablations),
    def z(base: Recipe) -> Recipe: ...           # configuration derived from y's recipe

    register_variant("x_e128", parent="x", fusion=dict(dim=128))   # a one-line variant

The registered name is the function name; its docstring's first line is the summary.
"""
from __future__ import annotations

import importlib
import pkgutil
import sys
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.errors import UserError
from core.recipe import Recipe, RecipeError


@dataclass(frozen=True)
class Entry:
    name: str
    parent: str | None            # the lineage parent: ordering, the solutions table, the ablation report
    build: Callable[..., Recipe]
    doc: str
    derives_from: str | None      # whose recipe `build` receives (the parent unless the card says otherwise)
    module: str                   # the plugin module that registered it (named in errors)


_ENTRIES: dict[str, Entry] = {}  # filled once by plugin imports, like timm's model registry


class UnknownSolution(UserError, KeyError):
    """An unregistered solution name; the message lists the known ones."""

    def __str__(self) -> str:
        return str(self.args[0])


def register(fn: Callable[..., Recipe] | None = None, *, parent: str | None = None,
             derives_from: str | None = None):
    """Register `fn` as a solution named after it (usable as @register or @register(parent=...)).

    `derives_from`: the solution whose recipe `fn` receives, when it is not the lineage parent (a
    model that descends from one solution but shares the configuration of another).
    """
    if derives_from is not None and parent is None:
        raise ValueError("derives_from needs a lineage parent too")

    def decorate(func: Callable[..., Recipe]) -> Callable[..., Recipe]:
        _add(Entry(func.__name__, parent, func, (func.__doc__ or "").strip(), derives_from or parent,
                   func.__module__))
        return func

    return decorate(fn) if fn is not None else decorate


def register_variant(name: str, *, parent: str, doc: str = "", **changes: Any) -> None:
    """Register `name` as `parent` with `changes` (same syntax as Recipe.derive)."""
    module = sys._getframe(1).f_globals.get("__name__", "?")  # the calling plugin
    _add(Entry(name, parent, lambda base: base.derive(**changes), doc or f"{parent} with {changes}", parent, module))


def _add(entry: Entry) -> None:
    if entry.name in _ENTRIES and _ENTRIES[entry.name].build is not entry.build:
        raise ValueError(f"solution {entry.name!r} is registered twice")
    _ENTRIES[entry.name] = entry


def discover() -> None:
    """Import every module of the `plugins` package (each registers its solutions)."""
    import plugins

    for module in pkgutil.iter_modules(plugins.__path__):
        importlib.import_module(f"plugins.{module.name}")


def names() -> list[str]:
    """Registered solution names in lineage order: depth-first from the roots, a parent before its
    children, one-line variants (children without children of their own) right after their parent."""
    discover()
    children: dict[str | None, list[str]] = {}
    for name, entry in _ENTRIES.items():
        children.setdefault(entry.parent, []).append(name)
    ordered: list[str] = []

    def visit(name: str) -> None:
        ordered.append(name)
        for child in sorted(children.get(name, []), key=lambda c: bool(children.get(c))):
            visit(child)

    for root in children.get(None, []):
        visit(root)
    orphans = [name for name in _ENTRIES if name not in ordered]
    if orphans:
        raise ValueError(f"solutions with an unregistered parent: {orphans}")
    return ordered


def get(name: str) -> Recipe:
    """The full recipe of solution `name` (its parent chain applied)."""
    discover()
    if name not in _ENTRIES:
        raise UnknownSolution(f"unknown solution {name!r}; known solutions: {', '.join(names())}")
    entry = _ENTRIES[name]
    if entry.derives_from is not None and entry.derives_from not in _ENTRIES:
        raise ValueError(f"solution {name!r} derives from the unregistered solution {entry.derives_from!r}")
    base = None if entry.derives_from is None else get(entry.derives_from)
    summary = entry.doc.splitlines()[0] if entry.doc else ""
    try:  # a bad choice is reported here, naming the plugin, not later when the model or schedule is built
        recipe = entry.build() if base is None else entry.build(base)
        return recipe.derive(name=name, parent=entry.parent, summary=summary)
    except RecipeError as error:
        raise RecipeError(f"solution {name!r} ({entry.module}): {error}") from None


def doc(name: str) -> str:
    """The full docstring of a solution (recipe card, reference, deviations)."""
    discover()
    return _ENTRIES[name].doc
