"""Python `logging` records of mafs_ros (engine, backends, model loading) onto a node's ROS logger, so that they
reach /rosout, `ros2 launch`'s console and log files with the node's name, like the node's own lines."""

from __future__ import annotations

import logging
from typing import Any

PACKAGE_LOGGER = "mafs_ros"


class RosLogHandler(logging.Handler):
    """Forwards each record to `ros_logger` (an rclpy logger) at the matching severity."""

    def __init__(self, ros_logger: Any) -> None:
        super().__init__()
        self._ros_logger = ros_logger
        self.setFormatter(logging.Formatter("[%(name)s] %(message)s"))

    def emit(self, record: logging.LogRecord) -> None:
        try:
            message = self.format(record)
            if record.levelno >= logging.CRITICAL:
                self._ros_logger.fatal(message)
            elif record.levelno >= logging.ERROR:
                self._ros_logger.error(message)
            elif record.levelno >= logging.WARNING:
                self._ros_logger.warning(message)
            elif record.levelno >= logging.INFO:
                self._ros_logger.info(message)
            else:
                self._ros_logger.debug(message)
        except Exception:  # noqa: BLE001 - logging must never break the caller; logging reports it itself
            self.handleError(record)


def route_package_logging(ros_logger: Any) -> RosLogHandler:
    """Sends the package's records to `ros_logger` instead of Python's root handlers; undo with `unroute`."""
    handler = RosLogHandler(ros_logger)
    package = logging.getLogger(PACKAGE_LOGGER)
    package.addHandler(handler)
    package.propagate = False  # else basicConfig's handler prints every line a second time
    if package.level == logging.NOTSET:
        package.setLevel(logging.INFO)
    return handler


def unroute(handler: RosLogHandler) -> None:
    package = logging.getLogger(PACKAGE_LOGGER)
    package.removeHandler(handler)
    if not any(isinstance(h, RosLogHandler) for h in package.handlers):
        package.propagate = True
