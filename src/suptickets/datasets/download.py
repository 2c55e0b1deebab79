"""The safe download: torchvision fetches a data set's official files into a scratch folder, and only
what it fetched is moved into place."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path
from typing import Callable

from ..errors import DataError

DEFAULT_ROOT = "data/raw"


def download_into(target: str | os.PathLike, fetch: Callable[[str], object], failed: str, advice: str) -> None:
    """Run a torchvision download `fetch(folder)` in a scratch folder under the working directory
    (.cache/suptickets/, git-ignored), then move what it fetched into `target`: a failed download
    creates nothing at `target`, and the DataError keeps the whole underlying message (one line)."""
    scratch = Path(".cache/suptickets")
    scratch.mkdir(parents=True, exist_ok=True)
    folder = Path(tempfile.mkdtemp(prefix="download-", dir=scratch))
    try:
        try:
            fetch(str(folder))
        except Exception as err:  # no network, refused, a bad archive, ...: say why, all of it
            why = " ".join(str(err).split()) or "no message"
            raise DataError(f"{failed} ({type(err).__name__}: {why}); {advice}") from None
        for path in sorted(p for p in folder.rglob("*") if p.is_file()):
            dest = Path(target) / path.relative_to(folder)
            dest.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(path, dest)
    finally:
        shutil.rmtree(folder, ignore_errors=True)
        for empty in (scratch, scratch.parent):  # leave the working directory as it was
            try:
                empty.rmdir()
            except OSError:
                break
