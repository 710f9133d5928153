"""Helpers for the official-parity tests: load a fixture from test/fixtures/mafs_parity/."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import torch

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "mafs_parity"
PARITY_ATOL = 1e-5  # max abs error allowed against the official module outputs (float32)


def whole_network_tolerance(actual: torch.Tensor, exact: torch.Tensor) -> float:
    """The tolerance of a whole-network float32 output `actual` against the official float32 fixture, given
    the same network's float64 output `exact` on the same input.

    Module fixtures hold to PARITY_ATOL on any CPU, but the float32 sums of a whole network come out in
    another order where oneDNN picks other kernels (AVX-512 or AVX2), so two correct float32 runs differ by up
    to the sum of their rounding errors. Ours is measured (|actual - exact|); the fixture's, made on another
    CPU, is taken to be as large; PARITY_ATOL stays on top. A wrong implementation does not widen it: its
    float32 and float64 outputs agree with each other, and both differ from the fixture.
    """
    return PARITY_ATOL + 2 * max_abs_error(actual, exact)


def load_fixture(name: str) -> dict[str, Any]:
    """The fixture `<name>.pt`, loaded without executing pickled code."""
    return torch.load(FIXTURES / f"{name}.pt", weights_only=True)


def max_abs_error(actual: Any, expected: Any) -> float:
    """Largest absolute difference over (nested lists/tuples of) tensors with equal structure and shapes."""
    if isinstance(expected, (list, tuple)):
        assert isinstance(actual, (list, tuple)) and len(actual) == len(expected)
        return max((max_abs_error(a, e) for a, e in zip(actual, expected)), default=0.0)
    assert actual.shape == expected.shape, f"shape {tuple(actual.shape)} != {tuple(expected.shape)}"
    return (actual.float() - expected.float()).abs().max().item()


OFFICIAL_KEYS_JSON = FIXTURES.parent / "mafs_official_state_dict_keys.json"


def official_key_shapes() -> dict[str, tuple[int, ...]]:
    """The official NetworkStage2 state_dict keys and shapes (15-class FMB head), in state_dict order."""
    import json

    keys = json.loads(OFFICIAL_KEYS_JSON.read_text())["keys"]
    return {key: tuple(shape) for key, shape in keys.items()}


def official_random_weights(key_shapes: dict[str, tuple[int, ...]], seed: int) -> dict[str, torch.Tensor]:
    """Regenerate fixture weights with the README's "Random-weight rule", drawn in key order."""
    import math

    g = torch.Generator().manual_seed(seed)

    def z(shape):
        return torch.randn(shape, generator=g)

    def u(shape):
        return torch.rand(shape, generator=g)

    out: dict[str, torch.Tensor] = {}
    for key, shape in key_shapes.items():
        parts = key.split(".")
        leaf = parts[-1]
        if leaf == "num_batches_tracked":
            out[key] = torch.tensor(0)
        elif leaf == "running_mean":
            out[key] = 0.1 * z(shape)
        elif leaf == "running_var":
            out[key] = 0.5 + u(shape)
        elif leaf == "weight" and len(shape) == 1:
            t = 1.0 + 0.1 * z(shape)
            if key.endswith(".bn3.weight"):
                t = t * 0.2
            out[key] = t
        elif leaf == "weight":
            t = z(shape) / math.sqrt(math.prod(shape[1:]))
            if any(p in ("F", "G", "H") for p in parts):
                t = t * 0.1
            out[key] = t
        elif leaf == "bias":
            out[key] = 0.1 * z(shape)
        elif leaf == "T_c":
            channels = key_shapes[key[: -len("T_c")] + "mlp_pool.down.weight"][1]
            out[key] = channels * (1.0 + 0.1 * z(()))
        elif leaf in ("gamma", "temperature"):
            out[key] = 1.0 + 0.1 * z(shape)
        elif leaf == "p":
            n = shape[0]
            out[key] = torch.eye(n)[torch.randperm(n, generator=g)]
        elif leaf == "sign_s":
            out[key] = torch.where(u(shape) < 0.5, -1.0, 1.0)
        elif leaf in ("lower", "upper"):
            out[key] = z(shape) / math.sqrt(shape[0])
        elif leaf == "log_s":
            out[key] = 0.1 * z(shape)
        else:
            raise KeyError(f"no random-weight rule for {key}")
    return out


def tensor_sha256(t: torch.Tensor) -> str:
    import hashlib

    return hashlib.sha256(t.contiguous().numpy().tobytes()).hexdigest()
