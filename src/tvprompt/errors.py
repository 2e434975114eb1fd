"""Typed user-facing errors.

Library code raises these with a one-line message that says what is wrong and what to do;
the CLI maps them to exit codes (``TvpError`` -> 1, ``UsageError`` -> 2) without a traceback.
"""


class TvpError(Exception):
    """A data error: a bad file, a bad value in a file, a failed run. Exit code 1."""

    exit_code = 1


class UsageError(TvpError):
    """The command or call was used wrongly (bad flag combination, bad option value). Exit code 2."""

    exit_code = 2


class PromptFileError(TvpError):
    """A prompt directory is missing a file, holds a malformed one, or fails validation."""


class ImageError(TvpError):
    """An image file could not be read or is outside the accepted limits."""


class ImageTooLarge(ImageError):
    """An image is over a size limit (pixels): refused before it is decoded."""
