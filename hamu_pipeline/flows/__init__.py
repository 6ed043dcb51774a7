"""Prefect flows and the `hamu` command line: they compose tasks/, which call the hamu library."""
