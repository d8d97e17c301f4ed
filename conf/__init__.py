"""Packaged configuration: defaults, the dataset registry and example experiments (YAML only)."""
