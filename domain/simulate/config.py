"""What to simulate: period, trusts, seed, volume and how messy the feed is."""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from datetime import date
from typing import Final

from domain.events import TRUSTS


@dataclass(frozen=True)
class Mess:
    """Rates of the trouble real feeds have. Each is a probability in [0, 1].

    dup: an event is sent twice (same event id, replayed minutes to hours later).
    late: an event is delivered 15 minutes to 3 days after it happened.
    shuffle: an event is held back up to 30 minutes, so delivery order differs from event order.
    correction: an incident's disposition is first sent wrong, then corrected by a later event.
    retriage: an incident's category changes after creation (a category_changed event).
    unplaceable: an incident's location cannot be placed in England (unknown or Scottish
        postcode, a point at sea); it is still valid and is attributed to unknown geography.
    malformed: an extra record that fails validation (bad enum, missing field, time not ISO 8601,
        handover before arrival, trust mismatch, conveyed without destination).
    """

    dup: float = 0.0
    late: float = 0.0
    shuffle: float = 0.0
    correction: float = 0.0
    retriage: float = 0.0
    unplaceable: float = 0.0
    malformed: float = 0.0

    def __post_init__(self) -> None:
        for f in dataclasses.fields(self):
            v = getattr(self, f.name)
            if not 0.0 <= v <= 1.0:
                raise ValueError(f"mess rate {f.name}={v} is not between 0 and 1")

    @classmethod
    def preset(cls, name: str) -> Mess:
        """``default`` (what a real trust feed looks like) or ``none`` (clean and in order)."""
        try:
            return MESS_PRESETS[name]
        except KeyError:
            raise ValueError(f"unknown mess preset {name!r}: use one of {', '.join(MESS_PRESETS)}") from None


# Incident and call ids carry a 6-digit sequence per trust and day: 100x London's demand fits.
MAX_SCALE: Final = 100.0

MESS_PRESETS: Final[dict[str, Mess]] = {
    "default": Mess(dup=0.01, late=0.02, shuffle=0.05, correction=0.02, retriage=0.05,
                    unplaceable=0.005, malformed=0.002),
    "none": Mess(),
}


@dataclass(frozen=True)
class SimConfig:
    """A simulation: ``days`` local (Europe/London) days from ``start`` for ``trusts``.

    ``scale`` multiplies every volume (10 = ten times national demand, for load tests).
    ``calls_111`` adds the NHS 111 calls (about 55,000 a day for England).
    """

    start: date
    days: int = 1
    trusts: tuple[str, ...] = TRUSTS
    seed: int = 0
    mess: Mess = dataclasses.field(default_factory=Mess)
    scale: float = 1.0
    calls_111: bool = True

    def __post_init__(self) -> None:
        if self.days < 1:
            raise ValueError(f"days must be at least 1, not {self.days}")
        if self.seed < 0:
            raise ValueError(f"seed must be zero or positive, not {self.seed}")
        if not 0 < self.scale <= MAX_SCALE:
            raise ValueError(f"scale must be above 0 and at most {MAX_SCALE}, not {self.scale}")
        unknown = [t for t in self.trusts if t not in TRUSTS]
        if unknown or not self.trusts:
            raise ValueError(f"unknown trust code(s) {', '.join(unknown) or '(none given)'}: use {', '.join(TRUSTS)}")
