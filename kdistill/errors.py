"""User-facing errors.

Every bad input the user can fix raises `KdistillError` (or a subclass) with a message that names the
file, line or config key and says how to fix it. The CLI prints the message without a traceback and
exits with status 2; anything else is a bug and keeps its traceback.
"""


class KdistillError(Exception):
    """An error in the user's input (config, files, models) with a message that says how to fix it."""


class ConfigError(KdistillError):
    """A config key or value is wrong; the message names the key path (e.g. `train.seq_len`)."""


class DataError(KdistillError):
    """A data file is unusable; the message names the file and, where it applies, the line."""


class ModelError(KdistillError):
    """A teacher or student cannot be loaded or does not fit the run (vocabulary, positions)."""
