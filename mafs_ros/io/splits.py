"""Validation protocols for labelled MFNet-style frames: which frames are held out, and which are kept out of
training without being validated on (a guard band).

MFNet frame ids are five digits and D or N (day, night): `00105D` is frame 05 of sequence 001, daytime. Frames
of one sequence a few numbers apart show the same street, so the choice of held-out frames decides what the
validation measures:

    block        frames xx21-xx35 of every sequence are held out, xx18-xx20 and xx36-xx38 are a guard band:
                 no training frame neighbours a validation frame, so the score is that of new streets (a robot
                 driving somewhere it was not trained).
    interleaved  every 4th labelled frame of each sequence (in frame order) is held out and its neighbours
                 train: MFNet's own protocol and that of the published numbers (a robot in the streets it was
                 trained in).
    none         nothing is held out (the final training on every labelled frame).

Stems that are not MFNet frame ids form one sequence, in name order; `block` holds none of them out.
"""

from __future__ import annotations

import re
from collections.abc import Iterable
from dataclasses import dataclass

from ..errors import ConfigurationError

PROTOCOLS = ("block", "interleaved", "none")

_MFNET_STEM = re.compile(r"^(\d{3})(\d{2})([DN])$")
BLOCK_HELD_OUT = range(21, 36)
BLOCK_GUARD = (18, 19, 20, 36, 37, 38)
INTERLEAVE_EVERY = 4


@dataclass(frozen=True)
class Holdout:
    """A protocol's answer for a set of stems: `held_out` are validated on, `guard` are used for neither."""

    held_out: frozenset[str]
    guard: frozenset[str]

    def trains(self, stem: str) -> bool:
        return stem not in self.held_out and stem not in self.guard


def _sequence(stem: str) -> tuple[str, int] | None:
    """(sequence id, frame number) of an MFNet frame id, e.g. 00105D -> ("001D", 5); None for other stems."""
    match = _MFNET_STEM.match(stem)
    return (match[1] + match[3], int(match[2])) if match else None


def holdout(stems: Iterable[str], protocol: str) -> Holdout:
    """The frames of `stems` that `protocol` (one of PROTOCOLS) holds out and keeps as a guard band.

    Interleaved counts the labelled frames given, so pass the stems of every folder that is split together.
    """
    if protocol not in PROTOCOLS:
        raise ConfigurationError(f"unknown validation protocol {protocol!r}; known: {PROTOCOLS}")
    stems = sorted(set(stems))
    if protocol == "none":
        return Holdout(frozenset(), frozenset())
    if protocol == "block":
        held, guard = set(), set()
        for stem in stems:
            frame = (_sequence(stem) or ("", -1))[1] % 100
            if frame in BLOCK_HELD_OUT:
                held.add(stem)
            elif frame in BLOCK_GUARD:
                guard.add(stem)
        return Holdout(frozenset(held), frozenset(guard))
    sequences: dict[str, list[str]] = {}
    for stem in stems:
        sequences.setdefault((_sequence(stem) or ("",))[0], []).append(stem)
    held = set()
    for members in sequences.values():
        # The 3rd of every 4 frames in order, so a sequence's first and last frames train.
        held.update(members[INTERLEAVE_EVERY // 2 :: INTERLEAVE_EVERY])
    return Holdout(frozenset(held), frozenset())
