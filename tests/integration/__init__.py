"""Integration tests against the real local Kafka broker (session fixture in tests/conftest.py)."""
