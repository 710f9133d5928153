"""What every part of the bag layer shares: its errors and the records a reader yields."""

from __future__ import annotations

from dataclasses import dataclass

from ..errors import MafsError


class BagError(MafsError):
    """A bag that cannot be opened or used; the message names the bag and the cause."""


class BagReadError(BagError):
    """Reading stopped partway (truncated or corrupt storage); `messages_read` messages came before it."""

    def __init__(self, message: str, messages_read: int) -> None:
        super().__init__(message)
        self.messages_read = messages_read


@dataclass(frozen=True)
class TopicInfo:
    """A topic of a bag: message type and message count."""

    msgtype: str
    count: int


@dataclass(frozen=True)
class BagMessage:
    """One stored message: topic, type, receive (log) time in ns and the serialized CDR bytes."""

    topic: str
    msgtype: str
    receive_ns: int
    raw: bytes | memoryview


def describe_error(exc: BaseException) -> str:
    """An exception as "Type: message" (just the type when the message is empty), for error messages."""
    text = str(exc).strip()
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__
