"""Typed errors with stable codes.

Every failure that can reach a user carries a ``code`` of the form ``<stage>.<reason>``
(``ingest.outside_allowed_roots``, ``decode.unsupported_codec``). The code is part of the public
contract: it ends up in the failed VideoMetadata document (``error.code``) and in the DLQ entry.
Every code, its class and when it is raised: the error-code table in ``topics/CONTRACTS.md``
(section 4); a new code goes there too (``tests/unit/test_contracts_doc.py`` checks).
"""

from __future__ import annotations


class FramebusError(Exception):
    """Base class. ``code`` is stable; ``message`` is for humans; ``transient`` asks for a retry."""

    code: str = "framebus.error"
    transient: bool = False

    def __init__(self, message: str, *, code: str | None = None, transient: bool | None = None):
        super().__init__(message)
        self.message = message
        if code is not None:
            self.code = code
        if transient is not None:
            self.transient = transient

    def as_dict(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}

    def __reduce__(self):  # survive the trip back from a process pool
        return (_rebuild, (type(self), self.message, self.code, self.transient))


def _rebuild(cls, message, code, transient):
    return cls(message, code=code, transient=transient)


class InvalidEvent(FramebusError):
    """An event that does not parse or validate against its topic's model."""

    code = "event.invalid"


class EventTooLarge(FramebusError):
    code = "event.too_large"


class IngestError(FramebusError):
    """Rejected before decode: bad URI, outside allowed roots, too big, not a video."""

    code = "ingest.rejected"


class DecodeError(FramebusError):
    """The media could not be decoded (corrupt, truncated, unsupported)."""

    code = "decode.failed"


class ModelNotAvailable(FramebusError):
    """Pretrained weights are missing locally and cannot be fetched."""

    code = "models.weights_missing"


class ModelError(FramebusError):
    code = "models.failed"


class VectorStoreError(FramebusError):
    """The vector store refused or failed a write or query."""

    code = "index.failed"
    transient = True


class PublishTimeout(FramebusError):
    """A video's work did not finish within ``publish_timeout_s`` (a lost part): it is published as failed."""

    code = "publish.timeout"


class InternalError(FramebusError):
    """A bug or an unexpected exception inside a stage: the event still gets its DLQ entry and failed document."""

    code = "internal.error"


class BrokerError(FramebusError):
    """The broker cannot be used as configured: ``broker.*`` (embedded broker missing, bad address,
    unreachable, address in use; ``broker.transactions_unsupported`` / ``broker.transactions_unauthorized``:
    ``FRAMEBUS_DELIVERY_GUARANTEE=exactly_once`` on a broker without usable Kafka transactions, raised by
    ``streams.delivery.StageConsumer.start_producer``)."""

    code = "broker.failed"
    transient = True


class GenerationError(FramebusError):
    """A generation job that cannot run or finish: ``generate.*`` (unsupported request, quota, blocked
    prompt or output, encode failure), ``provenance.*`` (signing)."""

    code = "generate.failed"
