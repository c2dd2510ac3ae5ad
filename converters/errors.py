"""The one error type of the converters: its message names the file and the problem."""


class DatasetError(Exception):
    """Bad input: printed as one line by the CLIs, exit code 2."""
