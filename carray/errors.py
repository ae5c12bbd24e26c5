"""The one base class of errors a job reports as a single line (and exit code 2), not a traceback."""


class JobError(Exception):
    """Bad input, an unreachable cluster or storage, a foreign model file: the message says what
    is wrong and what to do."""


class OptionError(JobError, ValueError):
    """An option value the job cannot use (a bad --quality, --split, ...)."""
