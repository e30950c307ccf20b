"""Numbered SQL migrations for the store: ``NNNN_verb_object.sql``, 4 digits, +1 each.

Each file has an ``-- up`` section and an optional ``-- down`` section of ``;``-terminated
statements. Every statement is idempotent (``IF NOT EXISTS``, ``OR REPLACE``, ``IF EXISTS``) and
runs unchanged on chDB and on a ClickHouse server; ``sinks.migrate`` applies them in order and
records each in the ``schema_migrations`` table. Never edit an applied file: add the next number.
"""
