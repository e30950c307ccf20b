"""amb: the imperative shell (CLI, configuration, process management) of the ambulance data platform."""

__version__ = "0.1.0"
