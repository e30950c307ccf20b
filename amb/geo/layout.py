"""Names shared by the index builder and the loader (kept import-light: no pyarrow or scipy)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any, Final

#: Bump when the layout or the meaning of any array changes: it invalidates every cached index.
INDEX_FORMAT: Final = 1
MANIFEST: Final = "manifest.json"


def read_manifest(index_dir: Path) -> dict[str, Any] | None:
    """The index's manifest, or None when there is no (readable) index."""
    try:
        m: dict[str, Any] = json.loads((index_dir / MANIFEST).read_text(encoding="utf-8"))
        return m
    except (OSError, ValueError):
        return None
