"""Reading a bag for both replay modes: opening it with the topics needed, the passes in receive order, and
decoding messages with the failures counted instead of raised."""

from __future__ import annotations

import logging
import sys
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from ..bags import BagError, BagMessage, BagReader, BagReadError, deserialize
from ..stamps import stamp_ns, stamp_text
from .scoring import Evaluation
from ..errors import MafsError

logger = logging.getLogger(__name__)


class ReplayError(MafsError):
    """Nothing could be evaluated: the bag cannot be opened, a required topic is missing, the output exists."""


class Reading:
    """Reads a bag's topics in receive order with a progress bar; counts messages per topic and the time span."""

    def __init__(self, reader: BagReader, topics: Sequence[str]) -> None:
        self.reader = reader
        self.topics = list(topics)
        self.frames_read: dict[str, int] = {topic: 0 for topic in self.topics}
        self.first_ns: int | None = None
        self.last_ns: int | None = None
        self.error: str | None = None

    def run(self, handle: Callable[[BagMessage, int], None], desc: str) -> None:
        """Call handle(message, its 1-based index on its topic) for every message. A bag that breaks partway ends
        the reading: `error` says where (also logged)."""
        from tqdm import tqdm

        total = sum(self.reader.topics[topic].count for topic in self.topics)
        try:
            for message in tqdm(self.reader.messages(self.topics), total=total, desc=desc, unit="msg",
                                file=sys.stderr, disable=None):
                self.frames_read[message.topic] += 1
                self.first_ns = message.receive_ns if self.first_ns is None else self.first_ns
                self.last_ns = message.receive_ns
                handle(message, self.frames_read[message.topic])
        except BagReadError as exc:
            counts = ", ".join(f"{topic} {n}" for topic, n in self.frames_read.items())
            self.error = f"{exc} (frames read per topic: {counts}); the report covers the frames before that point"
            logger.error("%s", self.error)

    @property
    def duration_s(self) -> float:
        return 0.0 if self.first_ns is None else (self.last_ns - self.first_ns) / 1e9


def open_bag(
    bag: str | Path, required: dict[str, str], optional: dict[str, str | None]
) -> tuple[BagReader, dict[str, str]]:
    """The open bag and the topic of each thing (what -> topic): every `required` one, checked to be in the bag,
    and those `optional` ones the bag has (a warning names the bag's topics for the others). A camera topic the
    bag lacks is read from its image_transport `<topic>/compressed` where the bag has that. Raises ReplayError."""
    try:
        reader = BagReader(bag)
    except BagError as exc:
        raise ReplayError(str(exc)) from None
    present = {what: reader.image_topic(topic) for what, topic in required.items()}
    try:
        reader.require_topics(list(present.values()))
    except BagError as exc:
        reader.close()
        raise ReplayError(str(exc)) from None
    for what, topic in optional.items():
        if topic is None:
            continue
        if topic in reader.topics:
            present[what] = topic
        else:
            logger.warning("no %s: topic %s is not in %s (topics: %s)", what, topic, reader.path,
                           ", ".join(reader.topics) or "none")
    return reader, present


def ground_truth_stamps(reader: BagReader, labels_topic: str | None) -> set[int]:
    """Header stamps of the ground-truth messages (a first pass over that topic only)."""
    stamps: set[int] = set()
    if labels_topic is None:
        return stamps
    for message in messages_until_error(reader, [labels_topic]):
        try:
            stamps.add(stamp_ns(deserialize(message).header))
        except Exception:  # noqa: BLE001 - a corrupt message is reported by the main pass
            continue
    return stamps


def messages_until_error(reader: BagReader, topics: Sequence[str]) -> Iterator[BagMessage]:
    """reader.messages(topics), ending quietly where the bag breaks (the main pass reports it)."""
    try:
        yield from reader.messages(topics)
    except BagReadError:
        return


def decode(message: BagMessage, index: int, evaluation: Evaluation) -> Any:
    """The message object, or None (counted as "corrupt_message") if its bytes do not deserialize."""
    try:
        return deserialize(message)
    except Exception as exc:  # noqa: BLE001 - the CDR decoder raises several types on corrupt bytes
        evaluation.skip("corrupt_message", f"{message.topic} frame {index} (received at "
                        f"{stamp_text(message.receive_ns)}): cannot decode {message.msgtype}: {exc}")
        return None


def sample_indices(expected_pairs: int, count: int) -> set[int]:
    """`count` evenly spaced pair indices out of about `expected_pairs` (the contact sheet's rows)."""
    if count <= 0 or expected_pairs <= 0:
        return set()
    return {int(i) for i in np.linspace(0, expected_pairs - 1, min(count, expected_pairs)).round()}
