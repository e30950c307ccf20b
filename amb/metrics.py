"""Prometheus plumbing shared by every process, and the publisher's own metrics.

The worker's metrics are declared in streams/metrics.py and the sink's in sinks/sink.py; each name
is declared once. :func:`serve` is how every long-running process exposes /metrics.
"""

from __future__ import annotations

from prometheus_client import Counter, start_http_server

from amb.errors import ConfigError

PUBLISHER_EVENTS = Counter(
    "amb_publisher_events", "Events handed to Kafka by a trust publisher (before delivery reports).", ["trust"],
)
PUBLISHER_REJECTED = Counter(
    "amb_publisher_rejected", "Records refused by the publisher's validation, by reason code.", ["trust", "reason"],
)
PUBLISHER_FAILED = Counter(
    "amb_publisher_delivery_failed", "Events Kafka failed to acknowledge (delivery report errors).", ["trust"],
)

_serving: set[int] = set()


def serve(port: int, env_name: str, addr: str = "127.0.0.1") -> bool:
    """Serve /metrics on ``port`` (0 = off) once per process; a busy port is a one-line error naming
    the setting to change."""
    if not port or port in _serving:
        return False
    try:
        start_http_server(port, addr=addr)
    except OSError as exc:
        raise ConfigError(f"cannot serve metrics on {addr}:{port}: {exc.strerror} "
                          f"(set {env_name}, 0 = off)") from None
    _serving.add(port)
    return True


def serve_best_effort(port: int, env_name: str) -> None:
    """For short-lived commands (publish, simulate): metrics are welcome but never a reason to stop."""
    import click

    try:
        serve(port, env_name)
    except ConfigError as exc:
        click.echo(f"amb: warning: {exc}; continuing without metrics", err=True)
