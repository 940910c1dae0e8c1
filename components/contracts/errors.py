"""Errors that name the input at fault and what is wrong with it.

Every error here is a :class:`CampsegError`: a failure the user can act on. Both command lines
print its message as one ``error: ...`` line and exit 2, without a traceback (``--debug`` or
``CAMPSEG_DEBUG=1`` prints it).
"""


class CampsegError(Exception):
    """A failure the user can act on; its message says what is wrong and with which input."""


class PipelineInputError(CampsegError, ValueError):
    """Bad user input: a dataset file, a parameter or a run folder.

    The message always names the file or parameter and says what is wrong; the CLI prints it and
    exits non-zero without a traceback.
    """


class DatasetError(PipelineInputError):
    """A dataset folder or one of its files is unusable."""


class ParameterError(PipelineInputError):
    """A stage parameter is out of range or inconsistent with the data."""


class RunFolderError(PipelineInputError):
    """A run folder lacks an artifact that a stage needs, or holds an inconsistent one."""


class ParityError(CampsegError, RuntimeError):
    """An exported model disagrees with the PyTorch model beyond the tolerance (nothing is published)."""


class ValidationFailed(CampsegError, RuntimeError):
    """A produced document (for example the STAC item) does not validate against its schema."""


class StorageError(PipelineInputError):
    """Object storage or a storage URI is unusable: unreachable endpoint, missing bucket, bad
    credentials, a malformed URI, or a transfer that failed verification.

    The message names the endpoint, bucket or key and the cause; it never contains credentials.
    """


class TrackingError(PipelineInputError):
    """The MLflow tracking server or model registry is unusable, or refused an operation: an
    unreachable or unhealthy server, a missing run, a model that cannot be registered.

    The message names the tracking URI (without password), run or model and the cause.
    """


class TransientError(CampsegError, RuntimeError):
    """A failure that may pass by itself (an unreachable or overloaded server, a dropped connection,
    a 5xx answer, throttling): worth retrying, unlike every other error here."""


class TrackingUnavailable(TrackingError, TransientError):
    """The MLflow server did not answer, or answered 5xx: perhaps restarting or overloaded."""
