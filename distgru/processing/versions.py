"""Code versions for cache keys and saved processor state: hashes of the source files a result depends on.

Editing any of those files invalidates what was computed with the old code; there is no version constant that
someone must remember to bump. Processors registered outside this package count by the module defining them (a
feature set's own expressions are part of the feature cache key instead).
"""

from __future__ import annotations

import hashlib
import inspect
from collections.abc import Iterable
from pathlib import Path

import distgru.features

_PROCESSING = Path(__file__).parent


def source_hash(paths: Iterable[Path]) -> str:
    """16 hex digits over the files' names and bytes, in the given order."""
    h = hashlib.sha256()
    for path in paths:
        h.update(path.name.encode())
        h.update(path.read_bytes())
    return h.hexdigest()[:16]


def feature_code_version() -> str:
    """The feature engine: every module of :mod:`distgru.features`."""
    return source_hash(sorted(Path(distgru.features.__file__).parent.glob("*.py")))


def processing_code_version(processors: Iterable[object] = ()) -> str:
    """The processors and the segment rules that decide which rows they are fitted on, plus the modules that
    define ``processors`` (instances of classes registered elsewhere)."""
    files = [(_PROCESSING / name).resolve() for name in ("processors.py", "segments.py")]
    defined = {Path(inspect.getsourcefile(type(p)) or "").resolve() for p in processors}
    return source_hash(files + sorted(defined - set(files)))
