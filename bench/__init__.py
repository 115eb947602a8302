"""Measurement harness for spool: `python -m bench core [--quick]` (see bench/core.py)."""
