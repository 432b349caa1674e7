"""The summary of a ``mutmut run`` (``make mutate``): the killed ratio and every real survivor.

mutmut 3 keeps each mutated file's results in ``mutants/<file>.meta`` (mutant name -> exit code of
the tests that ran against it). This prints one line per mutant that no test killed, as
``file:line  mutation`` (the original line and what the mutant made of it), and the ratio of killed
mutants among those that are not equivalent.

An equivalent mutant (no behaviour can tell it apart from the original) is listed, with the reason,
in ``tests/mutation/equivalent.txt`` as ``file:line  mutation  # reason``. It is matched by its file
and mutation (the line is informative: code moves), and it leaves the ratio's denominator. A listed
mutant that no longer survives, or no longer exists, is reported as stale.

Exit status: 0 when the ratio reaches ``--min`` (percent), 1 below it, 2 when there are no results.
"""

from __future__ import annotations

import argparse
import ast
import json
import os
import sys
from collections import Counter
from dataclasses import dataclass
from pathlib import Path

from mutmut.mutation.diff_apply import get_diff_for_mutant
from mutmut.stats import status_by_exit_code
from mutmut.utils.format_utils import orig_function_and_class_names_from_key

ROOT = Path(__file__).resolve().parents[1]
EQUIVALENT = ROOT / "tests" / "mutation" / "equivalent.txt"
#: Statuses that count as killed: a test failed, or the mutant ran past its time limit.
KILLED = {"killed", "timeout", "caught by type check"}


@dataclass(frozen=True)
class Survivor:
    file: str
    line: int
    mutation: str
    status: str
    name: str

    def __str__(self) -> str:
        extra = "" if self.status == "survived" else f"  [{self.status}]"
        return f"{self.file}:{self.line}  {self.mutation}{extra}"


def _results(root: Path) -> dict[str, dict[str, int | None]]:
    """Mutant name -> exit code, per mutated source file (relative path)."""
    out: dict[str, dict[str, int | None]] = {}
    for meta in sorted((root / "mutants").rglob("*.py.meta")):
        codes = json.loads(meta.read_text(encoding="utf-8")).get("exit_code_by_key") or {}
        if codes:
            out[str(meta.relative_to(root / "mutants"))[: -len(".meta")]] = codes
    return out


def _function_span(source: str, name: str, class_name: str | None) -> tuple[int, int]:
    """The lines (1-based, inclusive) of function ``name`` (a method of ``class_name``) in ``source``."""
    tree = ast.parse(source)
    scopes: list[ast.AST] = [tree]
    if class_name:
        scopes = [n for n in tree.body if isinstance(n, ast.ClassDef) and n.name == class_name]
    for scope in scopes:
        for node in getattr(scope, "body", []):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef) and node.name == name:
                return node.lineno, node.end_lineno or node.lineno
    return 1, len(source.splitlines())


def _describe(root: Path, file: str, name: str) -> tuple[int, str]:
    """The original line a mutant changes and the change, ``old  ->  new`` (stripped)."""
    diff = get_diff_for_mutant(name, path=file).splitlines()
    removed = [d[1:].strip() for d in diff if d.startswith("-") and not d.startswith("---")]
    added = [d[1:].strip() for d in diff if d.startswith("+") and not d.startswith("+++")]
    source = (root / file).read_text(encoding="utf-8")
    func, class_name = orig_function_and_class_names_from_key(name)
    first, last = _function_span(source, func, class_name)
    lines = source.splitlines()
    line = first
    if removed:
        for number in range(first, last + 1):
            if lines[number - 1].strip() == removed[0]:
                line = number
                break
    old = " / ".join(removed) or "(nothing)"
    new = " / ".join(added) or "(deleted)"
    return line, f"{old}  ->  {new}"


def _equivalents(path: Path) -> dict[tuple[str, str], tuple[int, str]]:
    """(file, mutation) -> (line, reason) of each listed equivalent mutant."""
    listed: dict[tuple[str, str], tuple[int, str]] = {}
    if not path.exists():
        return listed
    for number, raw in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        text = raw.strip()
        if not text or text.startswith("#"):
            continue
        where, sep, rest = text.partition("  ")
        mutation, hash_sep, reason = rest.rpartition("  # ")
        file, colon, line = where.rpartition(":")
        if not (sep and hash_sep and colon and line.isdigit() and reason.strip()):
            raise SystemExit(f"{path}:{number}: expected 'file:line  mutation  # reason', got {raw!r}")
        listed[(file, mutation.strip())] = (int(line), reason.strip())
    return listed


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--root", type=Path, default=ROOT, help="the repository (holding mutants/)")
    parser.add_argument("--equivalent", type=Path, default=EQUIVALENT, help="the equivalent mutants' list")
    parser.add_argument("--min", type=float, default=95.0, help="the least killed ratio, percent")
    args = parser.parse_args(argv)
    os.chdir(args.root)  # mutmut reads mutants/ relative to the working directory

    results = _results(args.root)
    if not results:
        print(f"no mutmut results under {args.root / 'mutants'}: run `make mutate`", file=sys.stderr)
        return 2
    equivalents = _equivalents(args.equivalent)
    statuses: Counter[str] = Counter()
    survivors: list[Survivor] = []
    equivalent_seen: set[tuple[str, str]] = set()
    equivalent = 0  # mutants (two mutants may read the same, e.g. one change in two identical lines)
    for file, codes in results.items():
        for name, code in codes.items():
            status = status_by_exit_code[code]
            statuses[status] += 1
            if status in KILLED:
                continue
            line, mutation = _describe(args.root, file, name)
            if (file, mutation) in equivalents:
                equivalent_seen.add((file, mutation))
                equivalent += 1
                continue
            survivors.append(Survivor(file, line, mutation, status, name))

    total = sum(statuses.values())
    killed = sum(statuses[s] for s in KILLED)
    real = total - equivalent
    ratio = 100.0 * killed / real if real else 100.0
    print(", ".join(f"{n} {s}" for s, n in sorted(statuses.items())))
    if survivors:
        print(f"\n{len(survivors)} surviving mutants (file:line  original  ->  mutant):")
        for survivor in sorted(survivors, key=lambda s: (s.file, s.line, s.mutation)):
            print(f"  {survivor}")
    stale = sorted(set(equivalents) - equivalent_seen)
    if stale:
        print(f"\n{len(stale)} entries of {args.equivalent} match no surviving mutant (remove them):")
        for file, mutation in stale:
            print(f"  {file}:{equivalents[(file, mutation)][0]}  {mutation}")
    print(
        f"\nmutation score: {killed} of {real} non-equivalent mutants killed ({ratio:.1f}%); "
        f"{equivalent} equivalent mutants, as listed in {args.equivalent}"
    )
    if ratio < args.min:
        print(f"below the required {args.min:g}%", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
