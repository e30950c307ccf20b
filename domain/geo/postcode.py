"""UK postcodes in any spelling -> one fixed-width key.

A postcode is an outward code (2-4 characters: area letters, district digits, optional sub-district)
and an inward code (digit + two letters). Trusts send them as ``sw1a1aa``, ``SW1A 1AA``,
``SW1A  1AA`` and so on; every form maps to the same key. The key is the ONS ``pcd7`` layout
(outward left-aligned in 4 characters, then the inward code) packed big-endian into a uint64, so
sorted keys are sorted postcodes and a lookup is a ``searchsorted`` over a sorted array.

The scalar and the vectorised functions agree on every input (a hypothesis test checks it): only
ASCII whitespace, NBSP and NUL are removed, only ASCII letters are upper-cased.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

import numpy as np
from numpy.typing import NDArray

from domain.geo.status import Status

KEY_WIDTH: Final = 7
_DROP: Final = "\t\n\v\f\r \xa0\x00"
_DROP_TABLE: Final = {ord(c): None for c in _DROP}
_UPPER_TABLE: Final = {c: c - 32 for c in range(ord("a"), ord("z") + 1)}
_FORMAT: Final = re.compile(r"(?:[A-Z][0-9][A-Z0-9]?|[A-Z][A-Z][0-9][A-Z0-9]?|GIR)[0-9][A-Z]{2}")
_SEP: Final = 0xFF
_DELETE: Final = bytes(ord(ch) for ch in _DROP if ord(ch) < 128)
_TABLE: Final = bytes(
    b - 32 if 97 <= b <= 122 else b if (48 <= b <= 57 or 65 <= b <= 90 or b == _SEP) else ord("#")
    for b in range(256)
)
_IS_LETTER: Final = np.array([65 <= b <= 90 for b in range(256)], dtype=np.bool_)
_IS_DIGIT: Final = np.array([48 <= b <= 57 for b in range(256)], dtype=np.bool_)
# Longer strings go through the scalar path, so one junk cell cannot widen a whole batch's array.
_MAX_VECTOR_WIDTH: Final = 32


def compact(text: str) -> str:
    """Drop whitespace, upper-case ASCII letters: ``' sw1a 1aa'`` -> ``'SW1A1AA'``."""
    return text.translate(_DROP_TABLE).translate(_UPPER_TABLE)


def normalise_postcode(text: str | None) -> str | None:
    """Canonical ``'SW1A 1AA'`` form, or None when ``text`` is not a well-formed postcode."""
    if text is None:
        return None
    c = compact(text)
    if not _FORMAT.fullmatch(c):
        return None
    return f"{c[:-3]} {c[-3:]}"


def postcode_key(text: str | None) -> int | None:
    """The uint64 key of a postcode (as a Python int), or None when not well-formed."""
    canon = normalise_postcode(text)
    if canon is None:
        return None
    out, inw = canon.split(" ")
    return int.from_bytes(f"{out:<4}{inw}".encode("ascii"), "big")


def key_to_postcode(key: int) -> str:
    """Inverse of :func:`postcode_key`: ``'SW1A 1AA'``."""
    raw = int(key).to_bytes(8, "big")[1:].decode("ascii")
    return f"{raw[:4].rstrip()} {raw[4:]}"


def keys_to_postcodes(keys: NDArray[np.uint64]) -> NDArray[np.str_]:
    """Vectorised :func:`key_to_postcode`; key 0 (invalid) gives ``''``."""
    keys = np.ascontiguousarray(keys, dtype=np.uint64)
    raw = keys.astype(">u8").view(np.uint8).reshape(-1, 8)[:, 1:]
    outward = np.ascontiguousarray(raw[:, :4]).view("S4").ravel()
    inward = np.ascontiguousarray(raw[:, 4:]).view("S3").ravel()
    text = np.char.add(np.char.add(np.char.strip(outward), b" "), inward).astype(np.str_)
    text[keys == 0] = ""
    return text


def _as_unicode(postcodes: Sequence[str | None] | NDArray[np.generic]) -> tuple[NDArray[np.str_], NDArray[np.bool_]]:
    """Input -> (U array, missing mask). None and float NaN (pandas' missing) count as missing."""
    arr = np.asarray(postcodes)
    if arr.dtype.kind == "U":
        return arr.reshape(-1), np.zeros(arr.size, dtype=np.bool_)
    if arr.dtype.kind == "S":
        return np.char.decode(arr.reshape(-1), "latin-1"), np.zeros(arr.size, dtype=np.bool_)
    items = arr.reshape(-1).tolist() if arr.dtype.kind == "O" else list(postcodes)
    missing = np.fromiter((x is None or (isinstance(x, float) and x != x) for x in items),
                          dtype=np.bool_, count=len(items))
    text = np.array(["" if m else str(x) for x, m in zip(items, missing, strict=True)], dtype=np.str_)
    return text.reshape(-1), missing


def normalise_keys(
    postcodes: Sequence[str | None] | NDArray[np.generic],
) -> tuple[NDArray[np.uint64], NDArray[np.uint8]]:
    """Vectorised :func:`postcode_key`.

    Returns ``(keys, status)``: ``status`` is OK for a well-formed postcode, NO_LOCATION for a
    missing or blank one and INVALID_POSTCODE otherwise; ``keys`` is 0 where status is not OK.
    """
    text, missing = _as_unicode(postcodes)
    n = text.size
    keys = np.zeros(n, dtype=np.uint64)
    status = np.full(n, Status.INVALID_POSTCODE, dtype=np.uint8)
    if n == 0:
        return keys, status
    width = text.dtype.itemsize // 4
    if width > _MAX_VECTOR_WIDTH:
        long_rows = np.flatnonzero(np.char.str_len(text) > _MAX_VECTOR_WIDTH)
        short = np.ones(n, dtype=np.bool_)
        short[long_rows] = False
        k_s, s_s = normalise_keys(text[short].astype(f"U{_MAX_VECTOR_WIDTH}"))
        keys[short], status[short] = k_s, s_s
        for i in long_rows:
            k = postcode_key(str(text[i]))
            if k is not None:
                keys[i], status[i] = k, Status.OK
            elif not compact(str(text[i])):
                status[i] = Status.NO_LOCATION
        status[missing] = Status.NO_LOCATION
        return keys, status
    if width == 0:
        status[:] = Status.NO_LOCATION
        return keys, status

    # One pass through C's bytes.translate does the per-character work for the whole batch:
    # each row is written as bytes followed by a 0xFF separator, whitespace is deleted, ASCII
    # letters upper-cased and anything else turned into '#'. The separators then give every
    # row's compacted start and end, and the 7 key bytes are gathered from there.
    c = np.ascontiguousarray(text).view(np.uint32).reshape(n, width)
    buf = np.empty((n, width + 1), dtype=np.uint8)
    if int(c.max()) > 127:  # rare: non-ASCII -> 128 -> '#', but NBSP is whitespace
        clipped = np.minimum(c, 128)
        clipped[c == 0xA0] = 32
        c = clipped
    np.copyto(buf[:, :width], c, casting="unsafe")
    buf[:, width] = _SEP
    flat = np.frombuffer(buf.tobytes().translate(_TABLE, _DELETE), dtype=np.uint8)
    ends = np.flatnonzero(flat == _SEP)
    starts = np.empty(n, dtype=np.int64)
    starts[0] = 0
    starts[1:] = ends[:-1] + 1
    length = ends - starts
    lo = np.clip(length, 3, KEY_WIDTH) - 3          # outward length
    last = len(flat) - 1
    out = np.empty((n, 8), dtype=np.uint8)
    out[:, 0] = 0
    for j in range(4):
        out[:, 1 + j] = np.where(j < lo, flat[np.minimum(starts + j, last)], 32)
    for k in range(3):
        out[:, 5 + k] = flat[np.maximum(ends - 3 + k, 0)]
    o0, o1, o2, o3, i0, i1, i2 = (out[:, j] for j in range(1, 8))
    is_l, is_d = _IS_LETTER, _IS_DIGIT
    inward_ok = is_d[i0] & is_l[i1] & is_l[i2]
    one_letter = is_l[o0] & is_d[o1] & ((lo == 2) | ((lo == 3) & (is_l[o2] | is_d[o2])))
    two_letter = is_l[o0] & is_l[o1] & is_d[o2] & ((lo == 3) | ((lo == 4) & (is_l[o3] | is_d[o3])))
    gir = (lo == 3) & (o0 == ord("G")) & (o1 == ord("I")) & (o2 == ord("R"))
    ok = (length >= 5) & (length <= KEY_WIDTH) & inward_ok & (one_letter | two_letter | gir)
    packed = out.view(">u8").ravel().astype(np.uint64)
    keys = np.where(ok, packed, np.uint64(0))
    status = np.where(ok, Status.OK, np.where((length == 0) | missing, Status.NO_LOCATION,
                                              Status.INVALID_POSTCODE)).astype(np.uint8)
    return keys, status
