#!/usr/bin/env python3
"""Ground truth for the analyzer's Python line decoder (analyzer/src/python_lines.rs).

For each CPython interpreter given (by default the pyenv versions 3.8.18, 3.9.18, 3.10.13, 3.11.7,
3.12.1 and 3.13.0 under ~/.pyenv/versions), this compiles the snippets below, walks every code
object they contain (functions, lambdas, comprehensions, class bodies, module level), and records:

- the raw line table, byte for byte, as the tracer copies it (FORMAT.md §4.11): `co_lnotab` for
  3.8 and 3.9 (kind 1), `co_linetable` for 3.10 (kind 2) and for 3.11 and later (kind 3);
- `co_firstlineno`, `co_name`, `co_qualname` (3.11+; `co_name` before);
- for every instruction offset (in bytes, every 2 bytes over `co_code`) the line the interpreter
  itself computes: its C function `PyCode_Addr2Line`, called through ctypes, which is what
  tracebacks and tracemalloc use. -1 (no line) is written as null. Offsets are stored as runs
  `[start, end, line]`: every even offset in `[start, end)` has that line.

The snippets cover long functions (more than 256 lines), lines more than 127 apart, instructions
more than 255 bytes apart on one line, jumps, loops, try/except/finally, with, multi-line
expressions (line numbers going backwards), comprehensions, lambdas, generators, async functions,
decorators and class bodies. Interpreters from 3.11 on run twice, the second time with
`-X no_debug_ranges`, whose tables hold no columns (location codes 13 with line deltas).

usage: python3 scripts/python-line-fixtures.py [-o analyzer/tests/data/python_lines.json] [PYTHON...]

Run by hand after changing the snippets or adding an interpreter; the output is checked in and
`cargo test -p memtrace-analyzer` asserts that the decoder reproduces every (offset, line) pair of
every version. With no PYTHON arguments, the pyenv interpreters above that exist are used.
"""
import json
import os
import subprocess
import sys

PYENV_VERSIONS = ["3.8.18", "3.9.18", "3.10.13", "3.11.7", "3.12.1", "3.13.0"]

SNIPPETS = {}

SNIPPETS["control.py"] = '''
import os

def branches(x, y):
    if x > y:
        z = x - y
    elif x == y:
        z = 0
    else:
        z = y - x
    while z > 10:
        z //= 2
        if z == 13:
            break
        elif z == 17:
            continue
    for i in range(z):
        try:
            y += i
        except ValueError as e:
            y = -1
            raise
        finally:
            x += 1
    with open(os.devnull) as f:
        f.read()
    return x + y + z

class Box:
    size = 3

    def __init__(self, items):
        self.items = [i * 2 for i in items if i]
        self.index = {k: v for k, v in enumerate(items)}
        self.kinds = {type(i) for i in items}

    @property
    def total(self):
        return sum(i for i in self.items)

    @staticmethod
    def make(*args,
             **kwargs):
        return Box(list(args) +
                   list(kwargs.values()))

def gen(n):
    for i in range(n):
        yield i
    yield from range(n)

async def coro(x):
    await x
    async with x as y:
        pass
    return [z async for z in y]

square = lambda v: (
    v *
    v
)
'''

SNIPPETS["multiline.py"] = '''
def call(a, b, c):
    return a(
        b,
        c,
        [
            b,
            c,
        ],
        key=lambda q:
            q + 1,
    )


def chain(d):
    x = (d
         .get("a", 0)
         + d
         .get("b", 0))
    y = {
        "one": x,
        "two": x * 2,
        "three": [x
                  for _ in range(3)],
    }
    return y["one"] if x else \\
        y["two"]


def decorated():
    @staticmethod
    @property
    def inner():
        return 1
    return inner
'''

# Lines more than 127 (and 255) apart, in one function and at module level.
far = ["def far(a):", "    a += 1"]
far += ["    # gap"] * 200
far += ["    a += 2"]
far += ["    # gap"] * 300
far += ["    return (a,", "            a)"]
far += [""] * 150
far += ["x = far(1)", "y = x"]
SNIPPETS["far.py"] = "\n".join(far) + "\n"

# More than 256 lines in one function, and a line with more than 255 bytes of bytecode.
long = ["def long(a, b):", "    total = 0"]
for i in range(300):
    if i % 50 == 0:
        long.append("    for j in range(a):")
        long.append("        total += j * %d" % i)
    elif i % 7 == 0:
        long.append("    if total > %d:" % i)
        long.append("        total -= b")
    else:
        long.append("    total += a * %d + b" % i)
long.append("    big = [" + ", ".join("a + %d" % i for i in range(200)) + "]")
long.append("    return total + len(big)")
SNIPPETS["long.py"] = "\n".join(long) + "\n"


def dump():
    """Runs inside the interpreter being measured: prints its JSON on stdout."""
    import ctypes

    addr2line = ctypes.pythonapi.PyCode_Addr2Line
    addr2line.restype = ctypes.c_int
    addr2line.argtypes = [ctypes.py_object, ctypes.c_int]
    version = sys.version_info
    if version >= (3, 11):
        kind = 3
    elif version >= (3, 10):
        kind = 2
    else:
        kind = 1

    def codes(code):
        yield code
        for c in code.co_consts:
            if hasattr(c, "co_code"):
                yield from codes(c)

    out = []
    for filename in sorted(SNIPPETS):
        top = compile(SNIPPETS[filename], filename, "exec")
        for code in codes(top):
            table = code.co_lnotab if kind == 1 else code.co_linetable
            runs = []
            for offset in range(0, len(code.co_code), 2):
                line = addr2line(code, offset)
                line = None if line == -1 else line
                if runs and runs[-1][2] == line and runs[-1][1] == offset:
                    runs[-1][1] = offset + 2
                else:
                    runs.append([offset, offset + 2, line])
            out.append({
                "name": code.co_name,
                "qualname": getattr(code, "co_qualname", code.co_name),
                "filename": code.co_filename,
                "first_line": code.co_firstlineno,
                "code_len": len(code.co_code),
                "table": table.hex(),
                "lines": runs,
            })
    json.dump({
        "version": "%d.%d.%d" % version[:3],
        "line_table_kind": kind,
        "codes": out,
    }, sys.stdout)


def main():
    args = sys.argv[1:]
    output = os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "analyzer", "tests",
                          "data", "python_lines.json")
    if args[:1] == ["-o"]:
        output, args = args[1], args[2:]
    pythons = args or [
        p for p in (os.path.expanduser("~/.pyenv/versions/%s/bin/python" % v)
                    for v in PYENV_VERSIONS)
        if os.path.exists(p)
    ]
    if not pythons:
        sys.exit("no interpreter found: give their paths as arguments")
    versions = []
    for python in pythons:
        for options in ([], ["-X", "no_debug_ranges"]):
            text = subprocess.run([python] + options + [os.path.abspath(__file__), "--dump"],
                                  check=True, stdout=subprocess.PIPE).stdout
            dumped = json.loads(text)
            if options and dumped["line_table_kind"] < 3:
                continue
            dumped["options"] = " ".join(options)
            versions.append(dumped)
            print("%s %s: %d code objects" % (dumped["version"], dumped["options"],
                                              len(dumped["codes"])), file=sys.stderr)
    doc = {
        "generated_by": "scripts/python-line-fixtures.py",
        "lines": "per code object, runs [start, end, line]: every even byte offset in [start, end) "
                 "has this line according to the interpreter's PyCode_Addr2Line (null: -1, no line)",
        "versions": versions,
    }
    with open(output, "w") as f:
        json.dump(doc, f, indent=None, separators=(",", ":"))
        f.write("\n")
    print("wrote %s" % os.path.normpath(output), file=sys.stderr)


if __name__ == "__main__":
    if sys.argv[1:] == ["--dump"]:
        dump()
    else:
        main()
