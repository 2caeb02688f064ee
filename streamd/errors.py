"""Expected failures: the ones a user can fix (a wrong path, token, URL, config, a busy port).

Library code raises these; ``streamd.cli.main`` prints ``streamd: <message>`` on one line and exits
with the class's code, so every command fails the same way. Anything else is a bug and keeps its
traceback. The codes are listed in README.md and in ``streamd --help``.
"""
from __future__ import annotations


class UserFacingError(Exception):
    """An expected failure with a message for the user and the process exit code it maps to
    (raise a subclass, whose class sets the code; ``exit_code`` overrides it for one case)."""

    exit_code = 1

    def __init__(self, message: str, exit_code: int | None = None):
        super().__init__(message)
        if exit_code is not None:
            self.exit_code = exit_code


class UsageError(UserFacingError):
    exit_code = 2
    meaning = "bad arguments or configuration"


class NotFoundError(UserFacingError):
    exit_code = 3
    meaning = "not found: snapshot version, snapshot store, probe history, input folder"


class IntegrityError(UserFacingError):
    exit_code = 4
    meaning = "integrity: a sha256 mismatch, a missing or malformed manifest"


class AuthError(UserFacingError):
    exit_code = 5
    meaning = "the server refused the bearer token (401/403)"


class UnreachableError(UserFacingError):
    exit_code = 6
    meaning = "server or broker unreachable (refused, DNS, timeout) or answering with an error"


class LocalIOError(UserFacingError):
    exit_code = 7
    meaning = "a local file or folder cannot be read or written, or a port is already in use"


EXIT_CODES = [(0, "success"), (1, "unexpected error (a bug: the traceback is shown)")] + [
    (cls.exit_code, cls.meaning)
    for cls in (UsageError, NotFoundError, IntegrityError, AuthError, UnreachableError, LocalIOError)]


def os_error_text(error: OSError) -> str:
    """``Permission denied: /x/y`` rather than ``[Errno 13] Permission denied: '/x/y'``."""
    reason = error.strerror or str(error)
    return f"{reason}: {error.filename}" if error.filename else reason
