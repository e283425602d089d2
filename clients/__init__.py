"""Hashfed member SDK and the `hashfed` command line."""
