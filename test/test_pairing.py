"""ApproximateTimePairer on scripted stamp sequences: policy, counters, invariant, threads, determinism."""

from __future__ import annotations

import math
import random
import sys
import threading

import pytest

from mafs_ros.stream.pairing import SKEW_WINDOW, ApproximateTimePairer, Pair, PairingStats

MS = 1_000_000  # ns


def _check_invariant(pairer: ApproximateTimePairer, added: int) -> None:
    stats = pairer.stats
    assert 2 * stats.matched + stats.unmatched_rgb + stats.unmatched_thermal + pairer.queued == added


def _feed(pairer: ApproximateTimePairer, events: list[tuple[str, int]]) -> list[tuple[int, Pair]]:
    """Adds ("rgb" | "thermal", stamp) events with item = (kind, index); returns (event index, pair) per pair."""
    out = []
    for index, (kind, stamp) in enumerate(events):
        add = pairer.add_rgb if kind == "rgb" else pairer.add_thermal
        out += [(index, pair) for pair in add(stamp, (kind, index))]
    return out


def _random_merge(rng: random.Random, rgb: list[int], thermal: list[int]) -> list[tuple[str, int]]:
    """Any interleaving of the two streams that keeps each stream in order."""
    kinds = ["rgb"] * len(rgb) + ["thermal"] * len(thermal)
    rng.shuffle(kinds)
    streams = {"rgb": iter(rgb), "thermal": iter(thermal)}
    return [(kind, next(streams[kind])) for kind in kinds]


def _reference(rgb: list[int], thermal: list[int], offset_ns: int, slop_ns: int) -> list[tuple[int, int]]:
    """The documented policy, offline and brute force: (rgb stamp, thermal stamp) pairs.

    Thermal frames in order; each takes the nearest RGB frame newer than the last paired one, if |skew| < slop;
    equal distances go to the earlier RGB frame.
    """
    pairs, first_available = [], 0
    for t in thermal:
        candidates = [(abs(rgb[i] - (t + offset_ns)), i) for i in range(first_available, len(rgb))]
        candidates = [c for c in candidates if c[0] < slop_ns]
        if candidates:
            _, i = min(candidates)
            pairs.append((rgb[i], t))
            first_available = i + 1
    return pairs


# -------------------------------------------------------------------------------------------------------------
# Parameters


@pytest.mark.parametrize("kwargs", [
    {"slop_s": 0.0}, {"slop_s": -0.01}, {"slop_s": math.nan}, {"slop_s": math.inf}, {"slop_s": 1e-12},
    {"queue_size": 0}, {"queue_size": -3},
    {"thermal_offset_s": math.nan}, {"thermal_offset_s": math.inf},
    {"reset_on_backwards_s": 0.0}, {"reset_on_backwards_s": math.nan},
    {"max_wait_s": -0.001}, {"max_wait_s": math.nan}, {"max_wait_s": math.inf},
])
def test_invalid_parameters_raise_value_error(kwargs: dict) -> None:
    name = next(iter(kwargs))
    with pytest.raises(ValueError, match=name):
        ApproximateTimePairer(**kwargs)


def test_reset_on_backwards_inf_disables_resets() -> None:
    pairer = ApproximateTimePairer(reset_on_backwards_s=math.inf)
    pairer.add_rgb(100 * 10**9, "a")
    pairer.add_rgb(0, "b")
    assert (pairer.stats.resets, pairer.stats.stamp_backwards_rgb) == (0, 1)


# -------------------------------------------------------------------------------------------------------------
# Matching policy


def test_exact_stamps_pair_immediately_in_either_arrival_order() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01)
    for i in range(10):
        stamp = i * 100 * MS
        if i % 2:
            assert pairer.add_rgb(stamp, f"rgb{i}") == []
            pairs = pairer.add_thermal(stamp, f"th{i}")
        else:
            assert pairer.add_thermal(stamp, f"th{i}") == []
            pairs = pairer.add_rgb(stamp, f"rgb{i}")
        assert pairs == [Pair(f"rgb{i}", f"th{i}", stamp, stamp)]
        assert pairs[0].skew_ns == 0
        assert pairer.queued == 0
    assert pairer.stats.matched == 10
    assert pairer.flush() == []
    assert (pairer.stats.unmatched_rgb, pairer.stats.unmatched_thermal) == (0, 0)


def test_rgb_30hz_thermal_9hz_with_offset_and_jitter() -> None:
    rng = random.Random(7)
    lag_ns, slop_ns = 40 * MS, 12 * MS
    rgb = [round(i * 1e9 / 30) + rng.randint(-MS, MS) for i in range(300)]  # 10 s
    truth = [round(5 * MS + i * 1e9 / 9) for i in range(90)]
    thermal = [t - lag_ns + rng.randint(-3 * MS, 3 * MS) for t in truth]  # stamps lag by 40 ms, jittered
    # Arrival: RGB 5 ms after its stamp, thermal 60 ms after the true time (after its stamp: in-order per stream).
    arrivals = sorted([(s + 5 * MS, "rgb", s) for s in rgb] + [(t + 60 * MS, "thermal", s)
                                                              for t, s in zip(truth, thermal)])
    events = [(kind, stamp) for _, kind, stamp in arrivals]
    pairer = ApproximateTimePairer(slop_s=slop_ns / 1e9, queue_size=10, thermal_offset_s=lag_ns / 1e9)

    emitted = _feed(pairer, events)
    assert pairer.flush() == []  # every decision was final before the end of the stream
    pairs = [pair for _, pair in emitted]

    for pair in pairs:
        assert abs(pair.skew_ns) < slop_ns
        assert pair.skew_ns == pair.thermal_stamp_ns + lag_ns - pair.rgb_stamp_ns
    # Every thermal frame whose nearest RGB frame (over the whole stream) is within slop gets exactly that one.
    expected = {}
    for t in thermal:
        nearest = min(rgb, key=lambda r: abs(r - (t + lag_ns)))
        if abs(nearest - (t + lag_ns)) < slop_ns:
            expected[t] = nearest
    assert {p.thermal_stamp_ns: p.rgb_stamp_ns for p in pairs} == expected
    assert len(thermal) // 2 < len(expected) < len(thermal)  # the scenario exercises both outcomes
    assert [p.rgb_stamp_ns for p in pairs] == sorted(p.rgb_stamp_ns for p in pairs)
    # Emitted as soon as final: by the event delivering the thermal frame or the first RGB frame at or beyond it.
    for index, pair in emitted:
        t = pair.thermal_stamp_ns + lag_ns
        thermal_event = events.index(("thermal", pair.thermal_stamp_ns))
        rgb_event = next(i for i, (kind, s) in enumerate(events) if kind == "rgb" and s >= t)
        assert index == max(thermal_event, rgb_event)
    stats = pairer.stats
    assert stats.matched == len(expected)
    assert stats.unmatched_thermal == len(thermal) - len(expected)
    assert stats.unmatched_rgb == len(rgb) - len(expected)
    assert stats.evicted_rgb == stats.evicted_thermal == 0


@pytest.mark.parametrize("seed", range(6))
def test_matches_offline_reference_for_any_interleaving(seed: int) -> None:
    rng = random.Random(seed)
    slop_ns, offset_ns = rng.choice([5, 20, 60]) * MS, rng.randint(-30, 30) * MS

    def stream(rate_hz: float) -> list[int]:
        stamps, t = [], rng.randint(0, 50 * MS)
        for _ in range(150):
            t += max(1, round(1e9 / rate_hz * rng.uniform(0.5, 1.5)))
            stamps.append(t)
        return stamps

    # Either stream may be the faster one: the policy must hold when thermal frames compete for RGB frames.
    rgb, thermal = stream(rng.choice([9.0, 30.0])), stream(rng.choice([9.0, 30.0]))
    expected = _reference(rgb, thermal, offset_ns, slop_ns)
    for _ in range(3):
        pairer = ApproximateTimePairer(slop_s=slop_ns / 1e9, queue_size=10_000, thermal_offset_s=offset_ns / 1e9)
        pairs = [pair for _, pair in _feed(pairer, _random_merge(rng, rgb, thermal))] + pairer.flush()
        assert [(p.rgb_stamp_ns, p.thermal_stamp_ns) for p in pairs] == expected


def test_competing_thermal_frames_use_each_rgb_frame_once_without_crossing() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05)
    pairer.add_rgb(0, "r0")
    pairer.add_rgb(20 * MS, "r20")
    pairer.add_rgb(100 * MS, "r100")
    # t=8 ms takes r0 (nearest); t=12 ms would prefer r0 too but it is used, so it takes r20; t=15 ms must not
    # go back to anything before r20 and r100 is out of slop.
    pairs = pairer.add_thermal(8 * MS, "t8") + pairer.add_thermal(12 * MS, "t12") + pairer.add_thermal(15 * MS, "t15")
    assert [(p.rgb, p.thermal) for p in pairs] == [("r0", "t8"), ("r20", "t12")]
    assert pairer.stats.unmatched_thermal == 1


def test_equal_distance_goes_to_the_earlier_rgb_frame() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05)
    pairer.add_rgb(0, "early")
    pairer.add_rgb(20 * MS, "late")
    (pair,) = pairer.add_thermal(10 * MS, "t")
    assert pair.rgb == "early"
    assert pairer.queued == 1  # "late" stays available for the next thermal frame


@pytest.mark.parametrize("thermal_first", [False, True])
def test_slop_boundary_is_strict(thermal_first: bool) -> None:
    slop_ns = 10 * MS
    for delta, paired in [(slop_ns, False), (slop_ns - 1, True), (-slop_ns, False), (-(slop_ns - 1), True)]:
        pairer = ApproximateTimePairer(slop_s=slop_ns / 1e9)
        rgb_stamp, thermal_stamp = 1_000 * MS, 1_000 * MS + delta
        if thermal_first:
            pairs = pairer.add_thermal(thermal_stamp, "t") + pairer.add_rgb(rgb_stamp, "r")
        else:
            pairs = pairer.add_rgb(rgb_stamp, "r") + pairer.add_thermal(thermal_stamp, "t")
        pairs += pairer.flush()
        assert len(pairs) == int(paired), delta
        assert pairer.stats.matched == int(paired)
        assert pairer.stats.unmatched_rgb == pairer.stats.unmatched_thermal == int(not paired)


def test_thermal_offset_is_applied_and_reported_in_skew() -> None:
    stamps = [i * 100 * MS for i in range(1, 6)]
    without = ApproximateTimePairer(slop_s=0.02)
    with_offset = ApproximateTimePairer(slop_s=0.02, thermal_offset_s=0.075)
    results = []
    for pairer in (without, with_offset):
        events = [e for s in stamps for e in (("rgb", s), ("thermal", s - 73 * MS))]
        results.append([pair for _, pair in _feed(pairer, events)] + pairer.flush())
    assert results[0] == []
    assert [(p.rgb_stamp_ns, p.thermal_stamp_ns) for p in results[1]] == [(s, s - 73 * MS) for s in stamps]
    assert {p.skew_ns for p in results[1]} == {2 * MS}


def test_negative_offset() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01, thermal_offset_s=-0.5)
    pairer.add_thermal(1_500 * MS, "t")
    (pair,) = pairer.add_rgb(1_003 * MS, "r")
    assert (pair.thermal_stamp_ns, pair.skew_ns) == (1_500 * MS, -3 * MS)


def test_waits_while_a_later_rgb_frame_could_be_nearer() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05)
    assert pairer.add_rgb(0, "r0") == []
    assert pairer.add_thermal(30 * MS, "t") == []  # an RGB frame in (30, 60) ms would be nearer than r0
    (pair,) = pairer.add_rgb(33 * MS, "r33")
    assert pair.rgb == "r33"
    assert pairer.stats.unmatched_rgb == 1  # r0 was skipped over


def test_late_thermal_frame_waits_for_the_next_rgb_frame_when_the_near_ones_are_used() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05)
    pairer.add_thermal(0, "t0")
    pairer.add_rgb(5 * MS, "r5")  # final for t0 (stamp beyond it): paired
    assert pairer.add_thermal(10 * MS, "t10") == []  # RGB stream at 5 ms < 10 ms: wait
    assert pairer.add_rgb(70 * MS, "r70") == []  # |70 - 10| >= slop: t10 decided unmatched
    assert pairer.stats.unmatched_thermal == 1
    assert pairer.queued == 1


def test_rgb_frames_no_thermal_frame_can_reach_are_given_up_at_once() -> None:
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=100)
    pairer.add_thermal(1_000 * MS, "t")
    for i in range(5):
        pairer.add_rgb(i * 100 * MS, i)  # all <= 1000 - 20 ms
    assert (pairer.queued, pairer.stats.unmatched_rgb) == (1, 5)
    pairer.flush()
    assert pairer.stats.unmatched_thermal == 1


# -------------------------------------------------------------------------------------------------------------
# Counters


def test_queue_size_eviction_is_counted() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01, queue_size=3)
    for i in range(5):
        assert pairer.add_rgb(i * 100 * MS, f"r{i}") == []
    assert pairer.add_thermal(0, "t0") == []  # its partner r0 was evicted
    stats = pairer.stats
    assert (stats.evicted_rgb, stats.unmatched_rgb, stats.unmatched_thermal, pairer.queued) == (2, 2, 1, 3)
    (pair,) = pairer.add_thermal(200 * MS, "t200")
    assert pair.rgb == "r2"
    # Thermal frames far ahead of the RGB stream wait for it and overflow their queue.
    for i in range(4):
        assert pairer.add_thermal(10_000 * MS + i * 100 * MS, f"t{i}") == []
    stats = pairer.stats
    assert (stats.evicted_thermal, stats.unmatched_rgb, stats.unmatched_thermal, pairer.queued) == (1, 4, 2, 3)
    _check_invariant(pairer, 11)


def test_eviction_happens_after_the_new_frame_settled_the_queue() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, queue_size=1)
    pairer.add_rgb(0, "r0")
    pairer.add_thermal(10 * MS, "t")
    (pair,) = pairer.add_rgb(33 * MS, "r33")  # evicting r0 first would have paired the farther r33
    assert pair.rgb == "r0"
    assert pairer.stats.evicted_rgb == 0


def test_duplicates_and_small_backwards_steps_are_counted_and_dropped() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01, reset_on_backwards_s=1.0)
    pairer.add_rgb(1_000 * MS, "first")
    assert pairer.add_rgb(1_000 * MS, "duplicate") == []
    assert pairer.add_rgb(500 * MS, "back") == []  # 0.5 s back: not a reset
    pairer.add_thermal(2_000 * MS, "t")
    assert pairer.add_thermal(2_000 * MS, "t dup") == []
    assert pairer.add_thermal(1_000 * MS, "t back") == []  # exactly reset_on_backwards_s back: not a reset
    stats = pairer.stats
    assert (stats.duplicates_rgb, stats.stamp_backwards_rgb) == (1, 1)
    assert (stats.duplicates_thermal, stats.stamp_backwards_thermal) == (1, 1)
    assert stats.resets == 0
    # "first" was given up when t at 2 s arrived; each dropped frame counted unmatched once.
    assert (stats.unmatched_rgb, stats.unmatched_thermal, pairer.queued) == (3, 2, 1)
    _check_invariant(pairer, 6)
    (pair,) = pairer.add_rgb(2_000 * MS, "r")  # the stream continues after its newest accepted stamp
    assert (pair.rgb, pair.thermal) == ("r", "t")


def test_large_backwards_jump_resets_both_queues() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01, queue_size=10, reset_on_backwards_s=1.0)
    added = 0
    # First pass of a 3 s bag at 10 Hz, thermal 1.5 frames behind; then the bag loops.
    for i in range(30):
        pairer.add_rgb(i * 100 * MS, ("a", i))
        if i >= 2:
            pairer.add_thermal((i - 2) * 100 * MS, ("a", i - 2))
        added += 2 if i >= 2 else 1
    queued_before = pairer.queued
    unmatched_before = pairer.stats.unmatched_rgb + pairer.stats.unmatched_thermal
    assert queued_before > 0
    assert pairer.add_rgb(0, ("b", 0)) == []  # loop: 2.9 s back
    added += 1
    stats = pairer.stats
    assert stats.resets == 1
    assert stats.unmatched_rgb + stats.unmatched_thermal == unmatched_before + queued_before
    assert pairer.queued == 1
    # The thermal stream still delivers its last two frames of the first pass: dropped, no second reset.
    pairs = pairer.add_thermal(2_800 * MS, "straggler") + pairer.add_thermal(2_900 * MS, "straggler")
    added += 2
    assert pairs == []
    assert (pairer.stats.resets, pairer.stats.stale_thermal, pairer.stats.stamp_backwards_thermal) == (1, 2, 0)
    # Second pass pairs again from the start of the bag.
    second = []
    for i in range(1, 10):
        second += pairer.add_rgb(i * 100 * MS, ("b", i))
        second += pairer.add_thermal((i - 1) * 100 * MS, ("b", i - 1))
        added += 2
        _check_invariant(pairer, added)
    assert [p.rgb for p in second] == [("b", i) for i in range(9)]
    assert pairer.stats.resets == 1


def test_one_bad_stamp_backwards_does_not_stall_the_other_stream() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01, reset_on_backwards_s=1.0)
    for i in range(1, 20):
        pairer.add_rgb(10_000 * MS + i * 100 * MS, i)
        pairer.add_thermal(10_000 * MS + i * 100 * MS, i)
    pairer.add_rgb(1_000 * MS, "glitch")  # resets
    pairs = []
    for i in range(20, 30):
        pairs += pairer.add_rgb(10_000 * MS + i * 100 * MS, i)
        pairs += pairer.add_thermal(10_000 * MS + i * 100 * MS, i)
    assert pairer.stats.resets == 1
    assert [p.rgb for p in pairs] == list(range(20, 30))


def test_flush_pairs_pending_frames_and_gives_up_the_rest() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, queue_size=10)
    pairer.add_rgb(0, "r0")
    pairer.add_rgb(100 * MS, "r100")
    pairer.add_thermal(120 * MS, "t120")  # could still meet a nearer RGB frame: pending
    pairer.add_thermal(500 * MS, "t500")
    assert pairer.queued == 3  # r0 unreachable, given up already
    pairs = pairer.flush()
    assert [(p.rgb, p.thermal) for p in pairs] == [("r100", "t120")]
    stats = pairer.stats
    assert (stats.matched, stats.unmatched_rgb, stats.unmatched_thermal, pairer.queued) == (1, 1, 1, 0)
    assert pairer.flush() == []
    assert pairer.add_rgb(50 * MS, "old") == [] and pairer.stats.stamp_backwards_rgb == 1  # stamps still checked


def test_reset_counts_queued_frames_and_forgets_stamps() -> None:
    pairer = ApproximateTimePairer(slop_s=0.01)
    pairer.add_rgb(5_000 * MS, "r")
    pairer.add_thermal(9_000 * MS, "t")  # r unreachable: given up
    pairer.add_thermal(9_100 * MS, "t2")
    pairer.reset()
    stats = pairer.stats
    assert (stats.resets, stats.unmatched_rgb, stats.unmatched_thermal, pairer.queued) == (1, 1, 2, 0)
    pairer.add_rgb(0, "r0")  # an earlier stamp is fine after reset()
    (pair,) = pairer.add_thermal(0, "t0")
    assert pair.rgb == "r0"
    assert pairer.stats.stamp_backwards_rgb == 0


def test_stats_as_dict_and_snapshot() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05)
    empty = pairer.stats.as_dict()
    assert empty["skew_samples"] == 0 and "skew_ms_p50" not in empty
    assert set(empty) >= {"matched", "unmatched_rgb", "unmatched_thermal", "resets", "stamp_backwards_rgb",
                          "stamp_backwards_thermal", "duplicates_rgb", "duplicates_thermal"}
    for i, skew_ms in enumerate([1, -2, 3, -4, 10]):  # |skew| 1, 2, 3, 4, 10 ms
        pairer.add_rgb(i * 1_000 * MS, i)
        pairer.add_thermal(i * 1_000 * MS + skew_ms * MS, i)
    pairer.flush()  # the last thermal frame (+10 ms) waits for an RGB frame that could be nearer
    snapshot = pairer.stats
    d = snapshot.as_dict()
    assert d["matched"] == 5 and d["skew_samples"] == 5
    assert d["skew_ms_mean"] == pytest.approx(4.0)
    assert d["skew_ms_p50"] == pytest.approx(3.0)
    assert d["skew_ms_p95"] == pytest.approx(4 + 0.8 * 6)  # linear interpolation between ranks 4 and 5
    assert d["skew_ms_max"] == pytest.approx(10.0)
    assert d["skew_ms_signed_mean"] == pytest.approx((1 - 2 + 3 - 4 + 10) / 5)  # the sign tells which is late
    pairer.add_rgb(10_000 * MS, "later")
    pairer.add_thermal(10_000 * MS, "later")
    assert snapshot.matched == 5 and len(snapshot.skew_ns) == 5  # a snapshot, not a live view
    assert pairer.stats.matched == 6


def test_skew_window_is_bounded() -> None:
    stats = PairingStats()
    stats.skew_ns.extend(range(SKEW_WINDOW + 10))
    assert len(stats.skew_ns) == SKEW_WINDOW and stats.as_dict()["skew_ms_max"] == (SKEW_WINDOW + 9) / 1e6


# -------------------------------------------------------------------------------------------------------------
# Invariant, threads, determinism


def _messy_events(seed: int, seconds: int = 60) -> list[tuple[str, int]]:
    """30 Hz RGB and 9 Hz thermal (stamps 40 ms late) in arrival order, with jitter, duplicates, small backwards
    steps, and clock jumps both ways (bag loops, gaps) that the thermal stream sees 60 ms after the RGB one."""
    rng = random.Random(seed)
    jumps = [(rng.uniform(0, seconds) * 1e9, rng.choice([-1, 1]) * rng.randint(2, 20) * 10**9) for _ in range(8)]
    events = []
    for kind, period_ns, lag_ns, delay_ns in (("rgb", 33 * MS, 0, 5 * MS), ("thermal", 111 * MS, 40 * MS, 60 * MS)):
        previous = None
        for k in range(seconds * 10**9 // period_ns):
            true_ns = k * period_ns
            stamp = 200 * 10**9 + true_ns + sum(j for at, j in jumps if at <= true_ns) - lag_ns
            stamp += rng.randint(-3 * MS, 3 * MS)
            roll = rng.random()
            if previous is not None and roll < 0.02:
                stamp = previous
            elif previous is not None and roll < 0.04:
                stamp = previous - rng.randint(1, 500) * MS
            else:
                previous = stamp
            events.append((true_ns + delay_ns + rng.randint(0, 30 * MS), kind, stamp))
    return [(kind, stamp) for _, kind, stamp in sorted(events)]


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_invariant_holds_at_every_step(seed: int) -> None:
    pairer = ApproximateTimePairer(slop_s=0.02, queue_size=4, thermal_offset_s=0.04)
    slop_ns = 20 * MS
    pairs: list[Pair] = []
    added = 0
    for added, (kind, stamp) in enumerate(_messy_events(seed), start=1):
        pairs += (pairer.add_rgb if kind == "rgb" else pairer.add_thermal)(stamp, added)
        _check_invariant(pairer, added)
        assert pairer.queued <= 2 * 4
    pairs += pairer.flush()
    _check_invariant(pairer, added)
    assert pairer.queued == 0
    stats = pairer.stats
    assert stats.matched == len(pairs) > 100
    assert stats.resets > 0 and stats.duplicates_rgb > 0 and stats.stamp_backwards_rgb > 0
    assert stats.evicted_rgb + stats.evicted_thermal > 0
    assert all(abs(p.skew_ns) < slop_ns for p in pairs)
    assert len({p.rgb for p in pairs}) == len({p.thermal for p in pairs}) == len(pairs)  # each frame used once


def test_same_sequence_gives_same_pairs_and_stats() -> None:
    events = _messy_events(11)
    runs = []
    for _ in range(2):
        pairer = ApproximateTimePairer(slop_s=0.02, queue_size=4, thermal_offset_s=0.04)
        pairs = _feed(pairer, events)
        pairs += [(len(events), p) for p in pairer.flush()]
        runs.append((pairs, pairer.stats.as_dict()))
    assert runs[0] == runs[1]
    assert len(runs[0][0]) > 100


def test_two_threads_adding_concurrently() -> None:
    n = 20_000
    pairer = ApproximateTimePairer(slop_s=0.01, queue_size=2 * n)
    pairs: list[Pair] = []
    pairs_lock = threading.Lock()
    errors: list[BaseException] = []
    done = threading.Event()
    start = threading.Barrier(3)

    def producer(add) -> None:
        try:
            start.wait()
            for i in range(n):
                out = add(i * 33 * MS, i)
                with pairs_lock:
                    pairs.extend(out)
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    def reader() -> None:
        try:
            start.wait()
            while not done.is_set():
                pairer.stats.as_dict()
                assert 0 <= pairer.queued <= 2 * n
        except BaseException as exc:  # noqa: BLE001 - re-raised by the main thread
            errors.append(exc)

    threads = [threading.Thread(target=producer, args=(pairer.add_rgb,)),
               threading.Thread(target=producer, args=(pairer.add_thermal,))]
    watcher = threading.Thread(target=reader)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)  # frequent switches make races (if any) likelier to show
    try:
        for t in [*threads, watcher]:
            t.start()
        for t in threads:
            t.join(timeout=60)
        done.set()
        watcher.join(timeout=60)
    finally:
        sys.setswitchinterval(interval)
    pairs += pairer.flush()
    assert errors == []
    # Whatever the interleaving, every frame meets its equal-stamp partner exactly once.
    assert sorted((p.rgb, p.thermal) for p in pairs) == [(i, i) for i in range(n)]
    stats = pairer.stats
    assert (stats.matched, stats.unmatched_rgb, stats.unmatched_thermal) == (n, 0, 0)


def test_external_pairs_are_counted_like_own_ones() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05)
    pairer.count_external_pair(Pair("r", "t", 1_000 * MS, 1_007 * MS))
    d = pairer.stats.as_dict()
    assert (d["matched"], d["skew_ms_signed_mean"], d["skew_ms_max"]) == (1, pytest.approx(7.0), pytest.approx(7.0))
    assert pairer.queued == 0


# -------------------------------------------------------------------------------------------------------------
# sync.max_wait_s: pairs without waiting for the next frame (receive times given)


def test_without_receive_times_a_frame_never_times_out() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.0)
    pairer.add_rgb(0, "r0")
    assert pairer.add_thermal(4 * MS, "t") == []
    assert pairer.next_deadline_ns() is None
    assert pairer.expire(10**12) == []


@pytest.mark.parametrize("thermal_first", [False, True])
def test_isolated_pair_with_skew_is_decided_at_its_deadline(thermal_first: bool) -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.01)
    received = 1_000 * MS  # the caller's clock, unrelated to the stamps
    if thermal_first:
        assert pairer.add_thermal(4 * MS, "t", received) == []
        assert pairer.add_rgb(0, "r", received + 2 * MS) == []
    else:
        assert pairer.add_rgb(0, "r", received) == []
        assert pairer.add_thermal(4 * MS, "t", received + 2 * MS) == []
    deadline = (received if thermal_first else received + 2 * MS) + 10 * MS  # the thermal frame's receive + wait
    assert pairer.next_deadline_ns() == deadline
    assert pairer.expire(deadline - 1) == []
    assert pairer.expire(deadline) == [Pair("r", "t", 0, 4 * MS)]
    assert pairer.queued == 0 and pairer.next_deadline_ns() is None


def test_equal_stamps_and_thermal_before_rgb_never_wait() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=10.0)
    assert pairer.add_rgb(0, "r0", 0) == []
    assert pairer.add_thermal(0, "t0", 1) == [Pair("r0", "t0", 0, 0)]
    assert pairer.add_thermal(96 * MS, "t1", 2) == []
    assert pairer.add_rgb(100 * MS, "r1", 3) == [Pair("r1", "t1", 100 * MS, 96 * MS)]


def test_a_nearer_frame_arriving_before_the_deadline_wins() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.02)
    pairer.add_rgb(0, "r0", 0)
    assert pairer.add_thermal(20 * MS, "t", 21 * MS) == []
    # beyond t but farther than r0: r0 is final at once, no wait for the deadline
    assert pairer.add_rgb(45 * MS, "r45", 23 * MS) == [Pair("r0", "t", 0, 20 * MS)]
    pairer2 = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.02)
    pairer2.add_rgb(0, "r0", 0)
    pairer2.add_thermal(20 * MS, "t", 21 * MS)
    (pair,) = pairer2.add_rgb(25 * MS, "r25", 30 * MS)  # nearer, arrived within the wait
    assert pair.rgb == "r25"


def test_a_frame_arriving_after_the_deadline_comes_too_late() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.01)
    pairer.add_rgb(0, "r0", 0)
    pairer.add_thermal(20 * MS, "t", 21 * MS)
    # No expire() call in between: the add notices the deadline first, as the node's deadline thread would have.
    (pair,) = pairer.add_rgb(25 * MS, "r25", 40 * MS)
    assert pair.rgb == "r0"
    assert pairer.queued == 1  # r25 waits for the next thermal frame


def test_at_the_deadline_without_a_candidate_the_first_one_within_slop_is_taken() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.01)
    pairer.add_thermal(100 * MS, "t", 0)
    assert pairer.expire(50 * MS) == []
    assert pairer.next_deadline_ns() is None  # only an RGB frame can settle it now
    assert pairer.add_rgb(10 * MS, "r10", 51 * MS) == []  # out of slop: given up
    (pair,) = pairer.add_rgb(80 * MS, "r80", 52 * MS)
    assert pair.rgb == "r80"


def test_max_wait_zero_pairs_with_the_best_frame_at_hand() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.0)
    pairer.add_rgb(0, "r0", 0)
    pairer.add_rgb(30 * MS, "r30", 1)
    assert pairer.add_thermal(40 * MS, "t", 2) == [Pair("r30", "t", 30 * MS, 40 * MS)]


def test_retuning_max_wait_applies_to_queued_frames() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=10.0)
    pairer.add_rgb(0, "r0", 0)
    pairer.add_thermal(4 * MS, "t", 1 * MS)
    assert pairer.expire(100 * MS) == []
    assert pairer.retune(max_wait_s=0.05) == [Pair("r0", "t", 0, 4 * MS)]
    assert pairer.max_wait_s == 0.05
    with pytest.raises(ValueError, match="max_wait_s"):
        pairer.retune(max_wait_s=-1.0)


def _timed_events(seed: int) -> list[tuple[int, str, int]]:
    """(receive ns, kind, stamp) of a 30 Hz RGB and a 9 Hz thermal camera with capture jitter and transport
    delays of 0-15 ms, in receive order."""
    rng = random.Random(seed)
    events = []
    for kind, period_ns, count in (("rgb", 33 * MS, 300), ("thermal", 111 * MS, 90)):
        for i in range(count):
            stamp = i * period_ns + rng.randint(-2 * MS, 2 * MS)
            events.append((stamp + rng.randint(0, 15 * MS), kind, stamp))
    return sorted(events)


@pytest.mark.parametrize("seed", [1, 2])
def test_deadlines_give_the_same_pairs_whether_expire_or_the_next_frame_notices_them(seed: int) -> None:
    """The node's deadline thread calls expire() at arbitrary moments; replay only adds frames. Same pairs."""
    events = _timed_events(seed)
    rng = random.Random(seed)
    runs = []
    for with_expire in (False, True):
        pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.008)
        pairs, clock = [], 0
        for index, (received, kind, stamp) in enumerate(events):
            while with_expire and clock < received:  # the deadline thread waking up at odd times
                pairs += pairer.expire(clock)
                deadline = pairer.next_deadline_ns()
                clock = min(received, (deadline if deadline is not None else received) + rng.randint(0, 2 * MS))
            pairs += (pairer.add_rgb if kind == "rgb" else pairer.add_thermal)(stamp, index, received)
            _check_invariant(pairer, index + 1)
        pairs += pairer.flush()
        runs.append(([(p.rgb, p.thermal) for p in pairs], pairer.stats.as_dict()))
    assert runs[0] == runs[1]
    assert runs[0][1]["matched"] > 80


def test_deadlines_change_only_pairs_a_nearer_late_frame_would_have_made() -> None:
    """Against waiting for the next frame (no receive times), a deadline changes a pair only where the
    nearer frame arrived after it; the skew stays within slop and pairs never cross."""
    events = _timed_events(3)
    waiting = ApproximateTimePairer(slop_s=0.05)
    timed = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.008)
    slow, fast = [], []
    for index, (received, kind, stamp) in enumerate(events):
        slow += (waiting.add_rgb if kind == "rgb" else waiting.add_thermal)(stamp, index)
        fast += (timed.add_rgb if kind == "rgb" else timed.add_thermal)(stamp, index, received)
    slow, fast = slow + waiting.flush(), fast + timed.flush()
    assert len(fast) == len(slow)
    same = sum(a.rgb == b.rgb and a.thermal == b.thermal for a, b in zip(slow, fast))
    assert same >= 0.5 * len(slow)
    assert all(abs(p.skew_ns) < 50 * MS for p in fast)
    assert [p.rgb_stamp_ns for p in fast] == sorted(p.rgb_stamp_ns for p in fast)


def test_a_regular_rgb_stream_decides_when_the_next_frame_cannot_be_nearer() -> None:
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=10.0)
    for i in range(5):
        pairer.add_rgb(i * 33 * MS, f"r{i}", i * 33 * MS)
    # the next RGB frame comes at about 165 ms: farther from 137 ms than r4 (132 ms), so r4 is final at once
    assert pairer.add_thermal(137 * MS, "t", 138 * MS) == [Pair("r4", "t", 132 * MS, 137 * MS)]
    # nearer to the next frame (about 198 ms) than to r5 (165 ms): it waits for that frame
    pairer.add_rgb(165 * MS, "r5", 165 * MS)
    assert pairer.add_thermal(190 * MS, "t2", 191 * MS) == []
    (pair,) = pairer.add_rgb(198 * MS, "r6", 199 * MS)
    assert pair.rgb == "r6"


def test_after_lost_rgb_frames_a_thermal_frame_waits_for_its_rgb_frame_instead_of_being_given_up() -> None:
    """Steps of 200 ms (every other RGB frame lost) predict the next frame 200 ms on; it comes after 100 ms, behind
    its thermal partner. The guess may settle pairs, never give a thermal frame up: the pair is made."""
    pairer = ApproximateTimePairer(slop_s=0.05, max_wait_s=0.0)
    for i in range(5):
        pairer.add_rgb(i * 200 * MS, f"r{i}", i * 200 * MS)
        assert pairer.add_thermal(i * 200 * MS + 5 * MS, f"t{i}", i * 200 * MS + 6 * MS)[0].rgb == f"r{i}"
    assert pairer.add_thermal(905 * MS, "t", 906 * MS) == []
    assert pairer.add_rgb(900 * MS, "r", 907 * MS) == [Pair("r", "t", 900 * MS, 905 * MS)]
    assert pairer.stats.unmatched_thermal == 0
