"""Deterministic ReCode-style prompt perturbations, for the robustness probe (SPEC section 8).

``perturb(problem, kind, seed)`` returns a new ``Problem``; it is a pure function of (problem, kind,
seed): the random stream is seeded from a hash of (kind, seed, prompt), never from global state.
Kinds (the prompt stays a valid Python prefix: ``prompt + canonical_solution`` still parses, and the
canonical solution still passes the perturbed problem's tests):
- "whitespace": inside the entry function's docstring (the prompt's first docstring for MBPP), on prose
  lines only, a single space becomes two, or a blank line is inserted after a line.
- "typo": inside that docstring, on prose lines only (no "(", "=", ">", "[" on the line and not the
  output line of a ">>>" example, so examples keep their meaning), 1 to 3 words of 4+ letters get one typo: two adjacent letters swapped, a letter
  doubled, or a letter replaced by a keyboard neighbour. Only letters change, so the literal stays valid.
- "varname": one parameter of the entry function is renamed, in the signature, in the canonical solution
  (every name token; attribute names are left alone) and as a whole word in the docstring (its mentions
  in examples and prose). Parameters that also appear as keyword arguments, attributes, imports or
  builtins are not eligible, so the rename cannot change behaviour.
- "funcname": the entry point's name changes case (camelCase, PascalCase or UPPER_CASE), everywhere: the
  prompt's code and docstrings, the canonical solution, the test code and the plus programs' call.
A problem that offers nothing to perturb for a kind (e.g. a function without parameters) comes back
unchanged; ``perturb_all`` reports how many changed.
"""

from __future__ import annotations

import ast
import builtins
import dataclasses
import hashlib
import io
import keyword
import random
import re
import tokenize
from typing import Sequence

from proxy_jax.codeeval.problems import Problem

KINDS = ("whitespace", "typo", "varname", "funcname")
_KEYBOARD = ["qwertyuiop", "asdfghjkl", "zxcvbnm"]
_NEW_NAMES = ("arg", "value", "item", "data", "inp", "param", "operand", "entry")


def _rng(problem: Problem, kind: str, seed: int) -> random.Random:
    digest = hashlib.sha256(f"{kind}\0{seed}\0{problem.prompt}".encode()).digest()
    return random.Random(int.from_bytes(digest[:8], "little"))


def _offset(text: str, lineno: int, col_bytes: int) -> int:
    """Character offset of an ast (1-based line, UTF-8 byte column) position in ``text``."""
    lines = text.splitlines(keepends=True)
    return sum(len(line) for line in lines[: lineno - 1]) + len(lines[lineno - 1].encode()[:col_bytes].decode())


def _docstring_content(problem: Problem) -> tuple[int, int]:
    """(start, end) character offsets, within the prompt, of the docstring's text between its quotes."""
    text = problem.prompt + problem.canonical_solution
    tree = ast.parse(text)
    nodes = [n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == problem.entry_point]
    # The first string statement, not body[0]: HumanEval/115's prompt puts "import math" before it.
    for first in (stmt for node in nodes + [tree] for stmt in node.body):
        if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
            start = _offset(text, first.lineno, first.col_offset)
            end = _offset(text, first.end_lineno, first.end_col_offset)
            if end <= len(problem.prompt):
                literal = text[start:end]
                quote = re.match(r"[rRuUbB]*('''|\"\"\"|'|\")", literal)
                return start + quote.end(), end - len(quote.group(1))
    raise ValueError(f"{problem.task_id}: the prompt holds no docstring to perturb.")


def _prose_lines(text: str, start: int, end: int) -> list[tuple[int, int]]:
    """(start, end) offsets of the docstring's prose lines (no code-looking characters)."""
    spans, pos, after_example = [], start, False
    for line in text[start:end].split("\n"):
        code_like = any(ch in line for ch in "(=>[") or line.strip().startswith("assert")
        if line.strip() and not code_like and not after_example:
            spans.append((pos, pos + len(line)))
        after_example = line.strip().startswith(">>>")  # the next line is that example's output
        pos += len(line) + 1
    return spans


def _apply(text: str, edits: list[tuple[int, int, str]]) -> str:
    for s, e, rep in sorted(edits, reverse=True):
        text = text[:s] + rep + text[e:]
    return text


def _whitespace(problem: Problem, rng: random.Random) -> dict:
    p = problem.prompt
    start, end = _docstring_content(problem)
    triple = p[end:end + 3] in ('"""', "'''")  # a newline is legal only inside a triple-quoted literal
    edits = []
    for s, e in _prose_lines(p, start, end):
        edits += [(m.start() + s, m.end() + s, "  ") for m in re.finditer(r"(?<=\S) (?=\S)", p[s:e])]
        if triple:
            edits.append((e, e, "\n"))  # a blank line after this one
    chosen = rng.sample(edits, min(len(edits), rng.randint(1, 3)))
    return {"prompt": _apply(p, chosen)}


def _typo(word: str, rng: random.Random) -> str:
    i = rng.randrange(1, len(word) - 1)
    op = rng.choice(("swap", "double", "neighbour"))
    if op == "swap" and word[i] != word[i + 1]:
        return word[:i] + word[i + 1] + word[i] + word[i + 2:]
    if op == "neighbour" and word[i].lower() in "".join(_KEYBOARD):
        row = next(r for r in _KEYBOARD if word[i].lower() in r)
        j = row.index(word[i].lower())
        near = [row[x] for x in (j - 1, j + 1) if 0 <= x < len(row)]
        return word[:i] + rng.choice(near) + word[i + 1:]
    return word[:i] + word[i] + word[i:]


def _typos(problem: Problem, rng: random.Random) -> dict:
    p = problem.prompt
    start, end = _docstring_content(problem)
    words = [(m.start() + s, m.end() + s) for s, e in _prose_lines(p, start, end)
             for m in re.finditer(r"(?<![\\\w])[A-Za-z]{4,}(?!\w)", p[s:e])]
    chosen = rng.sample(words, min(len(words), rng.randint(1, 3)))
    return {"prompt": _apply(p, [(s, e, _typo(p[s:e], rng)) for s, e in chosen])}


def _rename(text: str, old: str, new: str, strings: tuple[int, int] | None) -> list[tuple[int, int, str]]:
    """Edits renaming name tokens ``old`` (not attributes), and whole words inside string tokens that
    overlap ``strings`` (start, end)."""
    starts = [0]
    for line in text.splitlines(keepends=True):
        starts.append(starts[-1] + len(line))
    at = lambda pos: starts[pos[0] - 1] + pos[1]  # noqa: E731
    edits, prev = [], None
    for tok in tokenize.generate_tokens(io.StringIO(text).readline):
        s, e = at(tok.start), at(tok.end)
        if tok.type == tokenize.NAME and tok.string == old and not (prev and prev.string == "."):
            edits.append((s, e, new))
        elif tok.type == tokenize.STRING and strings and s < strings[1] and e > strings[0]:
            replaced = re.sub(rf"(?<!\w){re.escape(old)}(?!\w)", new, tok.string)
            if replaced != tok.string:
                edits.append((s, e, replaced))
        if tok.type not in (tokenize.NL, tokenize.NEWLINE, tokenize.COMMENT, tokenize.INDENT, tokenize.DEDENT):
            prev = tok
    return edits


def _rename_everywhere(problem: Problem, old: str, new: str, strings: tuple[int, int]) -> dict:
    joint = problem.prompt + problem.canonical_solution
    edits = _rename(joint, old, new, strings)
    cut = len(problem.prompt)
    if any(s < cut < e for s, e, _ in edits):
        raise ValueError(f"{problem.task_id}: a token straddles the prompt/solution boundary.")
    prompt = _apply(problem.prompt, [x for x in edits if x[1] <= cut])
    canonical = _apply(problem.canonical_solution, [(s - cut, e - cut, r) for s, e, r in edits if s >= cut])
    return {"prompt": prompt, "canonical_solution": canonical}


def _names_in(problem: Problem) -> set[str]:
    text = problem.prompt + problem.canonical_solution + "\n" + problem.test
    return set(re.findall(r"\w+", text))


def _varname(problem: Problem, rng: random.Random) -> dict:
    tree = ast.parse(problem.prompt + problem.canonical_solution)
    fn = next((n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef) and n.name == problem.entry_point), None)
    if fn is None:
        return {}
    blocked = set(dir(builtins))
    for node in ast.walk(tree):
        if isinstance(node, ast.keyword) and node.arg:
            blocked.add(node.arg)
        elif isinstance(node, ast.Attribute):
            blocked.add(node.attr)
        elif isinstance(node, ast.alias):
            blocked.add((node.asname or node.name).split(".")[0])
    args = fn.args
    params = [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs if a.arg not in blocked | {"self"}]
    if not params:
        return {}
    old = rng.choice(params)
    taken = _names_in(problem)
    new = next(n for n in (f"{b}{i or ''}" for i in range(100) for b in rng.sample(_NEW_NAMES, len(_NEW_NAMES)))
               if n not in taken)
    return _rename_everywhere(problem, old, new, _docstring_content(problem))


def _funcname(problem: Problem, rng: random.Random) -> dict:
    old = problem.entry_point
    parts = [x for x in old.split("_") if x]
    styles = {"camel": parts[0].lower() + "".join(x.capitalize() for x in parts[1:]),
              "pascal": "".join(x[:1].upper() + x[1:] for x in parts), "upper": old.upper()}
    taken = _names_in(problem)
    options = sorted({n for n in styles.values() if n != old and n.isidentifier() and not keyword.iskeyword(n)
                      and n not in taken and n not in dir(builtins)})
    if not options:
        return {}
    new = rng.choice(options)
    changed = _rename_everywhere(problem, old, new, (0, len(problem.prompt)))
    test = _apply(problem.test, _rename(problem.test, old, new, None)) if problem.test.strip() else problem.test
    return {**changed, "test": test, "entry_point": new}


_FNS = {"whitespace": _whitespace, "typo": _typos, "varname": _varname, "funcname": _funcname}


def perturb(problem: Problem, kind: str, seed: int = 0) -> Problem:
    """``problem`` with its prompt perturbed by ``kind`` (see the module docstring)."""
    if kind not in _FNS:
        raise ValueError(f"unknown perturbation kind {kind!r}; choose one of {', '.join(KINDS)}.")
    return dataclasses.replace(problem, **_FNS[kind](problem, _rng(problem, kind, seed)))


def perturb_all(problems: Sequence[Problem], kind: str, seed: int = 0) -> tuple[list[Problem], int]:
    """Every problem perturbed by ``kind``, and how many of them actually changed."""
    out = [perturb(p, kind, seed) for p in problems]
    return out, sum(a.prompt != b.prompt for a, b in zip(problems, out))
