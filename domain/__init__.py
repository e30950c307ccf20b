"""The pure domain core: no Kafka, ClickHouse or network imports. Everything here is testable alone."""
