"""ClickHouse sinks and migrations: one SQL set for chDB (embedded) and a ClickHouse server."""
