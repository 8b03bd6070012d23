"""Errors that are the user's to fix.

Anything raised as `UserError` is printed by the CLI as one sentence (no traceback) and the
process exits with code 2. Everything else is a bug in llm360 and keeps its traceback.
"""

import contextlib
import errno


class UserError(Exception):
    """A mistake in the input (config, files, arguments) that the user can fix."""


DISK_FULL_ERRNOS = (errno.ENOSPC, errno.EDQUOT)


def is_disk_full(error: BaseException) -> bool:
    """A full disk (or quota), as OSError or as the text that safetensors and others wrap it in."""
    if isinstance(error, OSError) and error.errno in DISK_FULL_ERRNOS:
        return True
    text = str(error)
    return any(s in text for s in ("No space left on device", "Disk quota exceeded", "os error 28", "StorageFull"))


class DiskFull(UserError):
    """The disk filled up while llm360 wrote `path`."""

    def __init__(self, path):
        self.path = str(path)
        super().__init__(f"the disk is full: {self.path} could not be written. Nothing already written was lost "
                         "(every file is written whole or not at all, and a checkpoint appears only when complete); "
                         "free some space and run the same command again to go on where it stopped")


@contextlib.contextmanager
def naming_a_full_disk(path):
    """Turn a full disk inside the block into DiskFull(path), one sentence for the user."""
    try:
        yield
    except DiskFull:
        raise
    except Exception as e:
        if is_disk_full(e):
            raise DiskFull(path) from None
        raise
