"""Hashfed federation server: signed statements in, a gap-free feed out."""

__version__ = "0.1.0"
