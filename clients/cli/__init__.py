"""The `hashfed` command line."""
