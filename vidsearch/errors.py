"""One exception family: the CLI turns any of these into a one-line message and exit code."""


class VidsearchError(Exception):
    """A user-facing error: the message says what is wrong and what to do."""

    exit_code = 2


class InputError(VidsearchError):
    """Bad input: a file, an option, a box, a timecode."""


class LibraryError(VidsearchError):
    """The library cannot be used as asked (not a library, wrong preset, newer schema)."""


class LockedError(LibraryError):
    """Another process is writing to the library."""

    exit_code = 3


class WeightsError(VidsearchError):
    """Model weights are missing, corrupt or for another architecture."""


class ClusterError(VidsearchError):
    """A distributed run (index --ray) failed on the cluster's side."""
