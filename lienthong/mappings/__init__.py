"""Declarative mappings (YAML) from a source system's rows to a target payload, and their engine."""
