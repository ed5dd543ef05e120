"""The error types that the command line turns into one clear message and a non-zero exit.

They live here, apart from the code that raises them, so that the command line (and with it every
stage) imports none of that code just to catch them.
"""


class DataError(Exception):
    """Bad input: the message names the file (and row) and what is wrong."""


class WeightsError(RuntimeError):
    """No way to get the requested weights; the message says what to do."""


class ModelFileError(RuntimeError):
    """A model file that is missing or not one of ours."""


class ExportError(RuntimeError):
    """An export that cannot be made, or does not answer as the model does."""


class DiskFull(Exception):
    """No space left while writing an output (which was not half-written: see tsloc.io.atomic_path)."""


LOST_RANK = 3  # exit status of a rank that stopped because another rank failed (distributed training)
