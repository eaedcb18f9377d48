"""Which distgru code is running: the package version, a digest of its source and, in a git checkout, the commit.

A job submitted with ``ray job submit --working-dir .`` runs an uploaded copy without ``.git`` (and usually without
an installed package), so the source digest is what names its code: ``python -m distgru --version`` prints the same
digest for a checkout, to match a result against.
"""

from __future__ import annotations

import hashlib
import importlib.metadata
import subprocess
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent


def package_version() -> str:
    """The installed distribution's version, or ``not installed`` (an uploaded working directory)."""
    try:
        return importlib.metadata.version("distgru")
    except importlib.metadata.PackageNotFoundError:
        return "not installed"


def source_digest() -> str:
    """SHA-256 (first 16 hex digits) of every ``.py`` file of the distgru package, by relative path."""
    h = hashlib.sha256()
    for path in sorted(PACKAGE.rglob("*.py")):
        h.update(path.relative_to(PACKAGE).as_posix().encode() + b"\0" + path.read_bytes() + b"\0")
    return h.hexdigest()[:16]


def git(*args: str) -> str | None:
    """``git <args>`` in the checkout distgru was imported from; None when that is not a checkout's top level (a
    copy inside some other repository must not borrow its commit)."""
    repo = PACKAGE.parent
    try:
        top = subprocess.run(["git", "-C", str(repo), "rev-parse", "--show-toplevel"], capture_output=True,
                             text=True, timeout=5)
        if top.returncode != 0 or Path(top.stdout.strip()).resolve() != repo:
            return None
        out = subprocess.run(["git", "-C", str(repo), *args], capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.TimeoutExpired):
        return None
    return out.stdout.strip() if out.returncode == 0 else None


def describe() -> str:
    """One line for ``--version``."""
    commit = git("rev-parse", "--short", "HEAD")
    return f"distgru {package_version()} (source {source_digest()}" + (f", git {commit})" if commit else ")")
