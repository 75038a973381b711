"""Rewrite `@torch.no_grad()` methods as `with torch.no_grad():` bodies, for mutation testing only.

mutmut 3 skips every decorated function (decorators run at definition time), so SAM's first_step /
second_step / restore would never be mutated. tools/mutation.sh runs this on the scratch copy, never on
the tree: the rewrite is equivalent for plain (non-generator) functions.
Usage: python tools/mutation_unwrap_no_grad.py FILE...
"""
from __future__ import annotations

import sys
from pathlib import Path

import libcst as cst
import libcst.matchers as m

NO_GRAD = m.Decorator(decorator=m.Call(func=m.Attribute(value=m.Name("torch"), attr=m.Name("no_grad"))))


class UnwrapNoGrad(cst.CSTTransformer):
    """Move a sole @torch.no_grad() decorator into a with-block around the body (after the docstring)."""

    def leave_FunctionDef(self, original: cst.FunctionDef, updated: cst.FunctionDef) -> cst.FunctionDef:
        if len(updated.decorators) != 1 or not m.matches(updated.decorators[0], NO_GRAD):
            return updated
        statements = list(updated.body.body)
        docstring = statements[:1] if updated.get_docstring() is not None else []
        block = cst.With(items=[cst.WithItem(cst.parse_expression("torch.no_grad()"))],
                         body=cst.IndentedBlock(body=statements[len(docstring):]))
        return updated.with_changes(decorators=[], body=updated.body.with_changes(body=[*docstring, block]))


def main(paths: list[str]) -> None:
    for path in map(Path, paths):
        path.write_text(cst.parse_module(path.read_text()).visit(UnwrapNoGrad()).code)


if __name__ == "__main__":
    main(sys.argv[1:])
