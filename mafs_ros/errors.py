"""The package's error family. Every error mafs_ros raises on purpose, with a message meant for the user,
derives from MafsError; the command line, the node and replay catch MafsError (and file-system errors) to report
a problem in one line, and let anything else, a bug or a failure inside torch, keep its traceback.

The classes below also derive from the built-in error they replace, so code that caught ValueError or
RuntimeError before still does. The other members live next to what raises them: CheckpointError (checkpoint), DatasetError (io/layouts),
BagError (bags), ImageConversionError (stream/conversions), StartupError (the node's
parameters), ReplayError, DemoError, CalibrationInputError, OnnxVerificationError, OfficialCheckpointError.
"""

from __future__ import annotations


class MafsError(Exception):
    """Base of every error mafs_ros raises on purpose."""


class ConfigurationError(MafsError, ValueError):
    """A bad option or argument value: device, precision, backend, size policy, thermal normalisation, ..."""


class DataError(MafsError, ValueError):
    """A file or data set that cannot be used: an unreadable image, a wrong shape, dtype or size, labels outside
    the classes, a folder that is not there."""


class InputError(MafsError, ValueError):
    """An input the engine cannot take: wrong dtype, shape, size, or non-finite thermal values."""


class UnavailableError(MafsError, RuntimeError):
    """What the configuration asks for is not there: a CUDA device, onnxruntime or its CUDA provider."""
