"""Errors the CLI turns into exit codes.

UserError (exit 2) is for anything the user can fix: a bad file, flag or catalogue. Anything else that escapes
is an internal error (exit 1) and its traceback goes to the run folder's log, never to the terminal.
"""


class UserError(Exception):
    """A problem with the user's input; the message is shown as one line."""

    exit_code = 2


class MissingDependency(UserError):
    """An optional backend or feature needs a package that is not installed."""

    def __init__(self, package: str, extra: str, what: str):
        super().__init__(f"{what} needs {package}, which is not installed (pip install 'advisor[{extra}]')")
        self.package = package
        self.extra = extra
