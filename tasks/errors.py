"""Errors that carry a one-line message for the user: what input is wrong and what to do."""


class QuantbenchError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""
