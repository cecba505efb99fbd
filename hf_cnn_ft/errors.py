"""The one exception type that the command line turns into a single clear line."""


class UserError(Exception):
    """Bad input the user can fix: a wrong path, key, column or model name.

    The CLI prints its message on one line, without a traceback, and exits non-zero.
    The message says what is wrong and what to do about it.
    """
