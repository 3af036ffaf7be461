"""Exception types. Every error the library raises on bad input is one of these, with a message
that says what went wrong and what to do about it."""


class ClipguideError(Exception):
    """Base class of the library's errors."""


class ConfigError(ClipguideError, ValueError):
    """A configuration has unknown keys, missing keys or values of the wrong type."""


class CheckpointError(ClipguideError):
    """A checkpoint cannot be read: wrong format, corrupted, unsafe, or not matching an architecture."""


class InputError(ClipguideError, ValueError):
    """An image, text or tensor given to the library is not of the expected shape, type or range."""


class TextTooLongError(InputError):
    """A text is longer than the tokenizer's context length and truncation was not requested."""


class WeightsNotFoundError(ClipguideError, FileNotFoundError):
    """Named weights are not on this machine and cannot be downloaded."""
