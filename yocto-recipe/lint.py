#!/usr/bin/env python3
"""Lint the recipe and the factory layer examples with oelint-adv.

oelint-adv is the BitBake recipe linter of the Yocto world (PyPI). This runs
it in its thorough mode against the releases the recipe builds on, with the
recipe's own variables declared (oelint-constants.json), and prints every
finding. A finding is either fixed in the file, silenced in the file with a
"# nooelint:" comment that says why, or, for the generated crates list (which
must stay byte for byte what "bitbake -c update_crates" writes and so cannot
carry a comment), listed in GENERATED below with its reason. Any other
finding, or a listed one that no longer occurs, makes this exit 1.

Usage:
    scripts/install-python-tools && python3 yocto-recipe/lint.py

Needs the pinned packages of scripts/python-tools.txt, from
target/python-tools (scripts/install-python-tools) or the environment.
"""

import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(REPO / "target" / "python-tools"))

from oelint_adv.core import create_lib_arguments, run  # noqa: E402

# Releases whose oe-core ships a Rust that builds the agent (README of docs:
# yocto.md, "Rust and Yocto releases").
RELEASES = ["whinlatter", "wrynose"]

# Each layer as it is linted on its own: the recipe (with its crates list),
# and a factory's meta-subscriber-overrides, whose bbappend stands alone there.
LAYERS = [
    ["lmp-device-register-rs_git.bb"],
    [
        "bbappend-examples/recipes-sota/lmp-device-register-rs/lmp-device-register-rs_%.bbappend",
        "bbappend-examples/recipes-sota/lmp-device-register-config/lmp-device-register-config_1.0.bb",
    ],
]

# (file, rule) -> why it stays.
GENERATED = {
    ("lmp-device-register-rs-crates.inc", "oelint.vars.inconspaces"):
        "SRC_URI += \" \\ opens the list exactly as oe-core's update_crates writes it",
    ("lmp-device-register-rs-crates.inc", "oelint.vars.notneededspace"):
        "the same line: the space is part of update_crates' form",
}


def findings(files, release):
    """(file relative to this directory, line, rule, message) of one layer."""
    args = create_lib_arguments(
        [str(HERE / f) for f in files],
        constantmods=["+" + str(HERE / "oelint-constants.json")],
        release=release,
        mode="all",
        quiet=True,
        jobs=1,
    )
    issues, _ = run(args)
    found = []
    for (path, line, rule, *_), message in issues:
        found.append((str(Path(path).resolve().relative_to(HERE)), line, rule, message))
    return found


def main():
    problems = 0
    for release in RELEASES:
        seen = set()
        found = [f for files in LAYERS for f in findings(files, release)]
        files = sum(len(files) for files in LAYERS)
        print(f"oelint-adv, release {release}: {len(found)} finding(s) in {files} files and their includes")
        for path, line, rule, message in found:
            reason = GENERATED.get((path, rule))
            if reason:
                seen.add((path, rule))
                print(f"  {path}:{line}: {rule}: justified: {reason}")
            else:
                problems += 1
                print(f"  {message}")
        for path, rule in sorted(set(GENERATED) - seen):
            problems += 1
            print(f"  {path}: {rule} no longer occurs: remove it from GENERATED in {Path(__file__).name}")
    if problems:
        print(f"{problems} finding(s) to fix, or to silence in the file with a reason")
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
