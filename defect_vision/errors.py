"""The library's error types: each message names the file (or option) and the problem; the CLI prints it as one
line and exits with code 2."""


class DatasetError(Exception):
    """Bad input: a missing, malformed or inconsistent file or option."""


class OutputError(DatasetError):
    """An output place that must not be written: a file where a folder goes, a folder holding the input, or a
    folder that is not a previous output of the same command (without --force)."""
