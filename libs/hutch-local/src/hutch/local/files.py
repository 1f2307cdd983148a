"""Small file helpers for state that holds secrets."""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any


def write_private(path: Path, text: str) -> None:
    """Atomically replaces `path` with `text`, readable and writable by the owner only.

    The temporary file is created with mode 0600 from the start, so the secret is never briefly
    readable by others, and the rename means readers see either the old or the new content.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "w") as out:
            out.write(text)
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


def write_json_private(path: Path, data: Any) -> None:
    """`write_private` for a JSON document."""
    write_private(path, json.dumps(data, indent=2, sort_keys=True) + "\n")


def read_json(path: Path) -> Any:
    """The JSON document in `path`, or None when the file does not exist."""
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        return None
