#!/usr/bin/env python3
"""What BitBake recipes say, read by oelint-parser, as JSON for tests/yocto.rs.

Usage: recipe_facts.py RECIPE [BBAPPEND...]

The recipe is read with what it includes and the bbappends applied, as
oelint-parser (the parser of oelint-adv, the Yocto recipe linter) sees them.
The object printed:

  values       variable -> its value after every operator, :append,
               :prepend and :remove (oelint-parser's ExpandVar; references
               to variables it knows are expanded, the others left as they are)
  assignments  [{file, name, op, value}] in file order, name with its
               overrides (FILES:${PN}), value as written (inline python
               included, line continuations as single spaces)
  exports      variable -> value of "export VAR = ..." ("" for a bare export)
  flags        variable -> {flag -> value}
  inherits     classes, in order
  includes     [{statement, name, file}]: require/include, name as written
  functions    name with overrides -> body as written (shell or python)
  statements   the other statements, as written (addhandler, addtask, ...)
  pn           the recipe's name, from its file name

Needs the pinned oelint-parser of scripts/python-tools.txt, from
target/python-tools (scripts/install-python-tools) or the environment.
"""

import json
import os
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "target" / "python-tools"))

from oelint_parser.cls_item import (  # noqa: E402
    Comment,
    Export,
    FlagAssignment,
    Function,
    Include,
    Inherit,
    Variable,
)
from oelint_parser.cls_stash import Stash  # noqa: E402

# oelint-parser marks a line continuation inside a value with this byte.
CONTINUATION = "\x1b"


def as_written(item, text):
    """`text` with the inline python oelint-parser stood in for put back."""
    for original, stand_in in item.InlineBlocks:
        text = text.replace(stand_in, original, 1)
    return text


def one_line(text):
    return " ".join(text.replace(CONTINUATION, " ").split())


def facts(paths):
    stash = Stash(quiet=True, new_style_override_syntax=True)
    for path in paths:
        stash.AddFile(path)
    stash.Finalize()
    recipe = paths[0]
    out = {
        "pn": stash.GuessRecipeName(recipe),
        "values": {
            name: " ".join(words)
            for name, words in stash.ExpandVar(filename=recipe).items()
        },
        "assignments": [],
        "exports": {},
        "flags": {},
        "inherits": [],
        "includes": [],
        "functions": {},
        "statements": [],
    }
    items = sorted(stash.GetItemsFor(filename=recipe), key=lambda i: i.Line)
    for item in items:
        origin = os.path.relpath(item.Origin, REPO)
        if isinstance(item, Variable):
            out["assignments"].append({
                "file": origin,
                "name": item.VarNameComplete,
                "op": item.VarOp.strip(),
                "value": one_line(as_written(item, item.VarValueStripped)),
            })
        elif isinstance(item, Export):
            out["exports"][item.Name] = as_written(item, item.Value or "")
        elif isinstance(item, FlagAssignment):
            out["flags"].setdefault(item.VarName, {})[item.Flag] = item.ValueStripped
        elif isinstance(item, Inherit):
            out["inherits"] += item.get_items()
        elif isinstance(item, Include):
            out["includes"].append({
                "statement": item.Statement,
                "name": item.IncName,
                "file": os.path.relpath(item.FileIncluded, REPO) if item.FileIncluded else None,
            })
        elif isinstance(item, Function):
            out["functions"][item.FuncNameComplete] = as_written(item, item.FuncBodyRaw)
        elif not isinstance(item, Comment) and item.Raw.strip():
            out["statements"].append(one_line(item.Raw))
    return out


if __name__ == "__main__":
    if len(sys.argv) < 2:
        sys.exit(__doc__)
    json.dump(facts([str(Path(p).resolve()) for p in sys.argv[1:]]), sys.stdout, indent=1)
    print()
