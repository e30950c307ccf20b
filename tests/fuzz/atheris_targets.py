"""Coverage-guided fuzzing (atheris) of the surfaces tests/fuzz/test_fuzz_*.py cover with bounded
hypothesis examples: `make fuzz`, not `make test`.

    python tests/fuzz/atheris_targets.py codec -runs=200000
    python tests/fuzz/atheris_targets.py sql -max_total_time=300
    python tests/fuzz/atheris_targets.py --all -runs=50000      # each target in turn, counts printed

Targets: ``codec`` (event bytes -> decode and validate), ``record`` (JSON text -> interchange
record parser), ``facts`` (fact-message bytes -> fact codec), ``sql`` (text -> SQL guard),
``export`` (bytes as a trust export file -> RecordFile + parser), ``archive`` (bytes as an archive
file -> checksum-verified reader). A crash is an exception other than the surface's own refusal;
atheris then writes the input as crash-<hash> in the current directory.
"""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

NOW = int(time.time() * 1000)
TMP = Path(tempfile.mkdtemp(prefix="amb-fuzz-"))


def codec(data: bytes) -> None:
    from amb.codec import default_codec
    from domain.events import Event
    from domain.validation import Rejection

    out = default_codec().decode_and_validate(data, NOW, "amb.events.RX6", "RX6")
    assert isinstance(out, Event | Rejection)


def record(data: bytes) -> None:
    from domain.validation import parse_record

    try:
        obj = json.loads(data)
    except (ValueError, RecursionError):
        return
    if isinstance(obj, dict):
        parse_record(obj, now_ms=NOW, trust="RX6")


def facts(data: bytes) -> None:
    from streams import fact_codec

    with contextlib.suppress(ValueError):
        fact_codec.decode(data)


def sql(data: bytes) -> None:
    from domain.access import SQLRefused, check_sql

    with contextlib.suppress(SQLRefused):
        check_sql(data.decode("utf-8", "replace"), ("dispositions_icb_day", "handover_site_day"))


def export(data: bytes) -> None:
    from amb.errors import AmbError
    from amb.publisher import RecordFile
    from domain.validation import parse_record

    suffix = (".jsonl", ".csv", ".avro")[data[0] % 3] if data else ".jsonl"
    path = TMP / f"export{suffix}"
    path.write_bytes(data[1:])
    try:
        rf = RecordFile(path)
        try:
            for _line, item in rf:
                if isinstance(item, dict):
                    parse_record(item, now_ms=NOW, trust="RX6")
        finally:
            rf.close()
    except AmbError:
        pass


def archive(data: bytes) -> None:
    from amb.archive import ArchiveError, read_file

    path = TMP / "x.avro"
    path.write_bytes(data)
    with contextlib.suppress(ArchiveError):
        read_file(path)


TARGETS: dict[str, Callable[[bytes], None]] = {
    "codec": codec, "record": record, "facts": facts, "sql": sql, "export": export, "archive": archive,
}


def main() -> int:
    args = sys.argv[1:]
    if not args or args[0] not in (*TARGETS, "--all"):
        print(__doc__)
        return 2
    if args[0] == "--all":
        failed = 0
        for name in TARGETS:
            print(f"== {name}", flush=True)
            failed |= subprocess.call([sys.executable, __file__, name, *args[1:]]) != 0
        return int(failed)
    import atheris

    target = TARGETS[args[0]]
    with atheris.instrument_imports():
        import amb.archive  # noqa: F401
        import amb.codec  # noqa: F401
        import amb.publisher  # noqa: F401
        import domain.access  # noqa: F401
        import domain.validation  # noqa: F401
        import streams.fact_codec  # noqa: F401
    atheris.Setup([sys.argv[0], *args[1:]], target)
    atheris.Fuzz()
    return 0


if __name__ == "__main__":
    sys.exit(main())
