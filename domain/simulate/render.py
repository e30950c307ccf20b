"""Columns -> interchange JSON lines, fast.

The trust interchange format (docs/trust-export-format.md) is flat JSON with fixed field names,
and most of a line has a fixed width once its event type is known (UUIDs, ISO 8601 times, incident
ids, category codes). So lines are assembled as rows of a byte matrix, one column slice per piece,
and decoded once; only the parts whose width varies (a location, a hospital's name of disposition)
are added in Python afterwards. That is several times faster than formatting each line, and the
output is plain compact JSON (absent fields are left out, never null).
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Final

import numpy as np
import numpy.typing as npt

I64 = npt.NDArray[np.int64]
U8 = npt.NDArray[np.uint8]
Piece = bytes | U8

DAY_MS: Final = 86_400_000
ISO_WIDTH: Final = 23  # 2026-10-01T12:34:56.789


def text(strings: Sequence[str] | npt.NDArray[np.str_]) -> U8:
    """Equal-length ASCII strings -> an (n, width) byte matrix; ValueError if the lengths differ."""
    arr = np.asarray(strings, dtype=np.str_)
    n = len(arr)
    if n == 0:
        return np.zeros((0, 0), dtype=np.uint8)
    lengths = np.char.str_len(arr)
    width = int(lengths[0])
    if np.any(lengths != width):
        raise ValueError(f"strings of different lengths cannot share a column: {arr[0]!r} .. {arr[lengths != width][0]!r}")
    return np.frombuffer(np.char.encode(arr, "ascii").astype(f"S{width}").tobytes(), dtype=np.uint8).reshape(n, width)


def digits(values: npt.ArrayLike, width: int) -> U8:
    """Non-negative integers -> zero-padded decimal, an (n, width) byte matrix."""
    v = np.asarray(values, dtype=np.int64)
    out = np.empty((len(v), width), dtype=np.uint8)
    for col in range(width - 1, -1, -1):
        out[:, col] = 48 + v % 10
        v = v // 10
    return out


def iso(ms: I64) -> U8:
    """Epoch milliseconds -> ISO 8601 UTC without the ``Z`` (pieces add it): (n, 23) bytes."""
    ms = np.asarray(ms, dtype=np.int64)
    n = len(ms)
    out = np.empty((n, ISO_WIDTH), dtype=np.uint8)
    if n == 0:
        return out
    day, rem = np.divmod(ms, DAY_MS)
    days, inverse = np.unique(day, return_inverse=True)
    prefixes = text([datetime.fromtimestamp(int(d) * 86400, tz=UTC).strftime("%Y-%m-%dT") for d in days.tolist()])
    out[:, 0:11] = prefixes[inverse.reshape(-1)]
    hh, rem = np.divmod(rem, 3_600_000)
    mm, rem = np.divmod(rem, 60_000)
    ss, milli = np.divmod(rem, 1000)
    out[:, 11:13] = digits(hh, 2)
    out[:, 13] = ord(":")
    out[:, 14:16] = digits(mm, 2)
    out[:, 16] = ord(":")
    out[:, 17:19] = digits(ss, 2)
    out[:, 19] = ord(".")
    out[:, 20:23] = digits(milli, 3)
    return out


def iso_strings(ms: I64) -> list[str]:
    """Epoch ms -> ISO 8601 strings with ``Z``."""
    return assemble(len(ms), iso(ms), b"Z")


_HEX: Final = np.frombuffer(b"0123456789abcdef", dtype=np.uint8)


def uuids(rng: np.random.Generator, n: int) -> U8:
    """``n`` version-4 UUIDs from the generator's bytes, as (n, 36) bytes: same seed, same ids."""
    raw = np.frombuffer(rng.bytes(16 * n), dtype=np.uint8).reshape(n, 16).copy()
    raw[:, 6] = (raw[:, 6] & 0x0F) | 0x40
    raw[:, 8] = (raw[:, 8] & 0x3F) | 0x80
    hexed = np.empty((n, 32), dtype=np.uint8)
    hexed[:, 0::2] = _HEX[raw >> 4]
    hexed[:, 1::2] = _HEX[raw & 0x0F]
    out = np.full((n, 36), ord("-"), dtype=np.uint8)
    out[:, 0:8] = hexed[:, 0:8]
    out[:, 9:13] = hexed[:, 8:12]
    out[:, 14:18] = hexed[:, 12:16]
    out[:, 19:23] = hexed[:, 16:20]
    out[:, 24:36] = hexed[:, 20:32]
    return out


def assemble(n: int, *pieces: Piece) -> list[str]:
    """Concatenate pieces row by row: ``bytes`` repeat on every row, matrices give each row its own."""
    widths = [len(p) if isinstance(p, bytes) else p.shape[1] for p in pieces]
    w = sum(widths)
    if n == 0:
        return []
    out = np.empty((n, w), dtype=np.uint8)
    pos = 0
    for p, pw in zip(pieces, widths, strict=True):
        if isinstance(p, bytes):
            out[:, pos:pos + pw] = np.frombuffer(p, dtype=np.uint8)
        else:
            if p.shape[0] != n:
                raise ValueError(f"piece has {p.shape[0]} rows, expected {n}")
            out[:, pos:pos + pw] = p
        pos += pw
    s = out.tobytes().decode("ascii")
    return [s[i:i + w] for i in range(0, n * w, w)]


def head(n: int, event_type: str, trust: str, event_id: U8, incident_id: U8, event_time: U8) -> list[Piece]:
    """The common fields every event starts with (no closing brace)."""
    return [
        b'{"event_id":"', event_id,
        f'","event_type":"{event_type}","trust":"{trust}","incident_id":"'.encode(), incident_id,
        b'","event_time":"', event_time, b'Z"',
    ]


def column_strings(matrix: U8) -> npt.NDArray[np.str_]:
    """An (n, width) byte matrix -> a numpy string array (for truth tables)."""
    if matrix.shape[0] == 0:
        return np.zeros(0, dtype=np.str_)
    return np.ascontiguousarray(matrix).view(f"S{matrix.shape[1]}").ravel().astype(np.str_)
