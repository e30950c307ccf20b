"""Geography shell: build the index from the shipped data (`build`) and load it (`GeoIndex`).

The decisions (postcode normalisation, statuses, vintages, attribution) live in ``domain.geo``.
Import ``amb.geo.build`` only to build: it pulls in pyarrow, py7zr and tqdm.
"""

from __future__ import annotations

from amb.geo.index import OUTPUT_COLUMNS, GeoIndex, GeoIndexError, Placement

__all__ = ["GeoIndex", "GeoIndexError", "OUTPUT_COLUMNS", "Placement"]
