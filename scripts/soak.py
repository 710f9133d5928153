"""Soak the MAFS node: 30 Hz RGB + 9 Hz thermal with jitter through real DDS for a while, then check that memory
and latency did not grow and that every input frame was fused or counted.

    .venv/bin/python scripts/soak.py [--duration-s 600] [--infer-ms 40] [--height 96 --width 128]

The same run as test_reliability.py's 60 s CI soak (`ros_harness.run_soak`), with a stand-in engine that sleeps
--infer-ms per pair. Prints RSS and end-to-end latency after the warm-up and at the end, and the frame identity;
exits 1 on any of `SoakResult.problems()` (RSS grew by more than 10 %, latency grew, a frame unaccounted for).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "test"))

from ros_harness import run_soak  # noqa: E402


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--duration-s", type=float, default=600.0)
    parser.add_argument("--infer-ms", type=float, default=40.0, help="time the stand-in engine takes per pair")
    parser.add_argument("--height", type=int, default=96)
    parser.add_argument("--width", type=int, default=128)
    args = parser.parse_args()
    result = run_soak(args.duration_s, infer_s=args.infer_ms / 1e3, size=(args.height, args.width))
    print(result.summary())
    problems = result.problems()
    for problem in problems:
        print(f"FAIL: {problem}")
    print("soak passed" if not problems else "soak FAILED")
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
