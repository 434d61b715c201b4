"""Exceptions that carry one clear line for the user.

Every error raised on purpose by cleanface is a :class:`CleanfaceError`; the CLI
prints its message as a single line and exits with status 1, never a traceback.
Messages name the file or value at fault and, where there is one, the fix.
"""


class CleanfaceError(Exception):
    """Base class: a problem the user can fix, described in one line."""


class DataError(CleanfaceError):
    """A dataset, manifest, RecordIO or list file cannot be read as asked."""


class SanityError(DataError):
    """The model behind a purification did not learn (collapsed embeddings, chance accuracy, runaway merges)."""


class ConfigError(CleanfaceError):
    """A setting, option value or pipeline file is invalid."""


class CheckpointError(CleanfaceError):
    """A checkpoint is missing, corrupted, unsafe or belongs to another run."""


class TrainingError(CleanfaceError):
    """Training cannot go on (for example the loss became non-finite)."""


class LockError(CleanfaceError):
    """Another live process holds the output directory."""


class PipelinePaused(CleanfaceError):
    """A pipeline stage waits for something a person provides (a review's overrides file); run the pipeline again after."""
