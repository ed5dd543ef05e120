"""The one error type that the command line turns into a clear message and a non-zero exit."""


class DataError(Exception):
    """Bad input: the message names the file (and row) and what is wrong."""
