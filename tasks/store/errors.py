"""Errors that carry a one-line message for the user: what input is wrong and what to do."""


class QuantbenchError(Exception):
    """A problem with the user's input or environment, reported as one line without a traceback."""


class TransientError(QuantbenchError):
    """A failure that may pass by itself (a store unreachable or overloaded): tasks retry on it.

    Never a property of the data: nothing derived from it is stored or reported as a result."""


class NotFoundError(QuantbenchError):
    """The object or file does not exist (a store answered so): for an image, a per-image failure."""


class UnsafeKeyError(QuantbenchError):
    """A key that would reach outside its store: absolute, with a ``..`` part, or (local stores)
    resolving outside the store's folder through a symbolic link. Never read, never written."""


class ImageDecodeError(QuantbenchError):
    """An image's bytes are not a decodable image (empty, truncated, corrupt, unknown format)."""


# The only per-image failures: the image itself is missing or bad. Anything else fails the shard.
IMAGE_FAILURES = (NotFoundError, ImageDecodeError)


def retry_on_transient(task, task_run, state) -> bool:
    """Prefect ``retry_condition_fn``: retry only what may pass; bad input fails at once."""
    return isinstance(state.data, TransientError)


# Retries declared on every task that talks to a store: 3 more tries, backing off.
STORE_RETRIES = {"retries": 3, "retry_delay_seconds": [2, 10, 30], "retry_condition_fn": retry_on_transient}


def import_tensorflow(needed_for: str):
    """TensorFlow, or a one-line error saying it is missing (the slim image has none)."""
    try:
        import tensorflow
    except ImportError:
        raise QuantbenchError(
            f"{needed_for} needs TensorFlow, which is not installed here: install quantbench[convert] "
            "(tensorflow-cpu 2.18.1) or use the full image"
        ) from None
    return tensorflow
