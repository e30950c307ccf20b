"""The England-wide incident simulator (pure): calibrated lifecycles, real locations, on-demand mess.

Entry points::

    cfg = SimConfig(start=date(2026, 10, 1), days=1, seed=7, mess=Mess.preset("default"))
    for delivery_ms, record in generate(cfg, pool): ...        # interchange dicts, delivery order
    for chunk in chunks(cfg, pool): chunk.lines ...            # columnar, JSON lines pre-rendered
    truth = Truth.empty(); list(chunks(cfg, pool, truth=truth)) # + what really happened
    for event in clean_events(cfg, pool): ...                  # valid domain Events, for the oracle

``pool`` is a :class:`LocationPool` of real postcodes; the shell (amb.simulate_io) loads it from the
geography index. Calibration figures and their sources are in :mod:`domain.simulate.calibration`.
"""

from domain.simulate.config import MESS_PRESETS, Mess, SimConfig
from domain.simulate.geography import LocationPool, SitePlan, imd_weight
from domain.simulate.lifecycle import (
    CATEGORY_NAMES,
    DISPOSITION_NAMES,
    KIND_NAMES,
    SOURCE_NAMES,
    CallTruth,
    EventTable,
    IncidentTruth,
)
from domain.simulate.stream import Truth, chunks, clean_events, days, generate

__all__ = [
    "CATEGORY_NAMES", "DISPOSITION_NAMES", "KIND_NAMES", "MESS_PRESETS", "SOURCE_NAMES", "CallTruth",
    "EventTable", "IncidentTruth", "LocationPool", "Mess", "SimConfig", "SitePlan", "Truth", "chunks", "clean_events", "days",
    "generate", "imd_weight",
]
