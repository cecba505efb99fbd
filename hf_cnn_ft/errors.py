"""The one exception type that the command line turns into a single clear line, and the helpers that
keep that line short."""

import reprlib


class UserError(Exception):
    """Bad input the user can fix: a wrong path, key, column or model name.

    The CLI prints its message on one line, without a traceback, and exits non-zero.
    The message says what is wrong and what to do about it.
    """


def first_line(exc: BaseException) -> str:
    """The first line of an exception's message (its type name if it has none), for a one-line error."""
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def located(origin: str, message: str) -> str:
    """`message` prefixed with the file it concerns, when there is one (command-line values have none)."""
    return f"{origin}: {message}" if origin else message


_SHORT = reprlib.Repr()
_SHORT.maxstring = _SHORT.maxother = 80
_SHORT.maxlist = _SHORT.maxtuple = _SHORT.maxdict = 6
_SHORT.maxlevel = 2


def shown(value: object) -> str:
    """`repr(value)`, cut short: a value quoted in an error line may be huge (a pasted file, a nested list)."""
    return _SHORT.repr(value)
