"""Named points in a memtrace trace, from Python.

Under ``LD_PRELOAD=.../libmemtrace.so`` every function here records a mark in the trace
(``memtrace_snapshot`` in the preload); without the preload they do nothing, so the calls can stay
in production code. Compare two marks with ``memtrace-analyze diff TRACE@before TRACE@after``.

    import memtrace

    memtrace.snapshot("warm")                   # one mark
    with memtrace.between("before", "after"):   # a mark on entry and one on exit
        handle_requests()

Run CPython with ``PYTHONMALLOC=malloc`` so that small objects are malloc calls the trace sees.
Copy this file next to your program or put its directory on ``PYTHONPATH``; it needs nothing but
the standard library.
"""

import contextlib
import ctypes

__all__ = ["available", "snapshot", "between"]


def _lookup():
    try:
        fn = ctypes.CDLL(None).memtrace_snapshot
    except (OSError, AttributeError):
        return None
    fn.argtypes = [ctypes.c_char_p]
    fn.restype = None
    return fn


_snapshot = _lookup()


def available():
    """True when the program runs under libmemtrace.so (marks are recorded)."""
    return _snapshot is not None


def snapshot(label):
    """Records a mark named ``label`` (str or bytes) now; a no-op without the preload."""
    if _snapshot is None:
        return
    if isinstance(label, str):
        label = label.encode("utf-8", "replace")
    _snapshot(label)


@contextlib.contextmanager
def between(before="before", after="after"):
    """Marks ``before`` on entry and ``after`` on exit (also when the block raises)."""
    snapshot(before)
    try:
        yield
    finally:
        snapshot(after)
