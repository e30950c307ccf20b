"""Faust agents: thin adapters that run the domain core over Kafka topics."""
