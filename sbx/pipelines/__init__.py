"""Composition: step specs, runs, records and the sbx CLI."""
