"""The error types that the command line and the stage scripts turn into one clear message and a
non-zero exit (tsloc.guard).

They live here, apart from the code that raises them, so that catching them imports none of that
code. Every one of them is a `UserError`: something the user can mend (input, params, files, disk),
told apart from a bug, which keeps its traceback.
"""


class UserError(Exception):
    """Something the user can mend; the message names the file (and row) and what is wrong."""


class DataError(UserError):
    """Bad input: the message names the file (and row) and what is wrong."""


class ParamsError(UserError, ValueError):
    """A value in params.yaml is missing or invalid."""


class UsageError(UserError):
    """A command-line argument out of its range: the command's usage is shown with it."""


class WeightsError(UserError, RuntimeError):
    """No way to get the requested weights; the message says what to do."""


class ModelFileError(UserError, RuntimeError):
    """A model file that is missing or not one of ours."""


class ExportError(UserError, RuntimeError):
    """An export that cannot be made, or does not answer as the model does."""


class DiskFull(UserError):
    """No space left while writing an output (which was not half-written: see tsloc.io.atomic_path)."""


EXIT_USER_ERROR = 2  # bad input, params, model files, a full disk: one line, nothing written
LOST_RANK = 3        # a rank that stopped because another rank failed (distributed training)
INTERRUPTED = 130    # Ctrl-C
