"""The error tree.

One base class, :class:`JobTrackerError`. Each subclass's docstring is its message, and each carries
its *class* (DESIGN.md "Error classes") as data, so callers branch on ``err.error_class`` rather
than on strings scattered around the code.
"""

from __future__ import annotations

import enum

from jobtracker.models.status import JobStatus


class ErrorClass(enum.StrEnum):
    """How the scheduler reacts to an error."""

    #: Retry with backoff; recorded on the row; never terminal.
    TRANSIENT = "transient"
    #: The job ends with the error's code and message.
    JOB_TERMINAL = "job_terminal"
    #: The job stays pending; the provider is paused until a probe succeeds.
    CONFIGURATION = "configuration"


class JobTrackerError(Exception):
    """jobtracker failed."""

    error_class: ErrorClass = ErrorClass.TRANSIENT

    def __init__(self, message: str | None = None) -> None:
        super().__init__(message or (self.__doc__ or "").strip().splitlines()[0])

    @property
    def message(self) -> str:
        return str(self.args[0]) if self.args else ""


class ConfigError(JobTrackerError):
    """The configuration is invalid."""

    error_class = ErrorClass.CONFIGURATION


class EnqueueError(JobTrackerError, ValueError):
    """The job cannot be enqueued.

    ``field`` names the request field that broke a rule (``kind``, ``job_id``...), so the HTTP
    API can point at it while every way in gives the same one-line message.
    """

    def __init__(self, message: str | None = None, *, field: str | None = None) -> None:
        super().__init__(message)
        self.field = field


class ClientError(JobTrackerError, ValueError):
    """The API client cannot be changed that way."""


class NoClientSecretKey(ConfigError):
    """JOBTRACKER_CLIENT_SECRET_KEY is not set: per-client webhook secrets cannot be derived."""


class NotFoundError(JobTrackerError, LookupError):
    """No such record."""


class InvalidTransition(JobTrackerError):
    """The status change is not allowed."""


class ProviderError(JobTrackerError):
    """The provider's query API failed.

    ``code`` is the provider's error code (``InternalError``, ``AuthFailure.SignatureFailure``) or a
    code of ours for transport faults (``Transport.Timeout``, ``Transport.BadAnswer``...);
    ``request_id`` is Tencent's RequestId when the answer carried one.
    """

    def __init__(
        self,
        message: str | None = None,
        *,
        code: str = "Unknown",
        request_id: str | None = None,
    ) -> None:
        super().__init__(message)
        self.code = code
        self.request_id = request_id

    def __str__(self) -> str:
        return f"{self.code}: {self.message}"


class TransientProviderError(ProviderError):
    """The provider failed temporarily; the poll will be retried."""

    error_class = ErrorClass.TRANSIENT


class ThrottledError(TransientProviderError):
    """The provider's rate limit was exceeded; the whole provider backs off."""


class UnexpectedAnswer(TransientProviderError):
    """The provider's answer could not be understood; the poll will be retried."""


class RequestRejected(TransientProviderError):
    """The provider rejected the request as malformed; the poll will be retried until the deadline.

    ``InvalidParameter*``, ``MissingParameter``, ``UnsupportedRegion``... on a query whose only
    input is the JobId cannot tell a bad JobId (one job) from a bug of ours or a bad region (every
    job): neither failing the job nor pausing the whole provider is safe, so it is retried and
    recorded, and the job ends ``expired`` at its deadline if it never clears.
    """


class JobTerminalError(ProviderError):
    """The provider says the job can never succeed."""

    error_class = ErrorClass.JOB_TERMINAL
    #: The terminal status the job takes, with this error's code and message.
    terminal_status: JobStatus = JobStatus.FAILED


class JobFailed(JobTerminalError):
    """The provider failed the job."""


class JobNotFound(JobTerminalError):
    """The provider does not know this job."""


class JobCanceled(JobTerminalError):
    """The job was canceled at the provider."""

    terminal_status = JobStatus.CANCELED


class ProviderConfigError(ProviderError):
    """The provider refused our credentials or the action; the provider is paused."""

    error_class = ErrorClass.CONFIGURATION


class UnsafeCallbackURL(JobTrackerError, ValueError):
    """The callback URL is refused."""
