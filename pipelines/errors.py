"""User-facing errors: each carries one line that the CLI prints before exiting non-zero."""


class VetsetError(Exception):
    """A problem with the user's input or configuration, explained in one line."""

    exit_code = 2

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))  # always one line


class DataError(VetsetError):
    """The dataset cannot be used as given (missing path, wrong schema, bad labels...)."""
