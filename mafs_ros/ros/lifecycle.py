"""Lifecycle plumbing: a managed node's transitions, built from the four steps of a node's start and stop.

A node using `ManagedSteps` defines
    _configure()            raises StartupError for a bad configuration
    _activate()
    _deactivate() -> int    returns the pairs it dropped
    _release(wait_s) -> bool    False: a forward pass was still running after wait_s
and the attributes `_active` and `finished` (a Future, done after the shutdown transition). A plain node calls
`_configure` and `_activate` itself; a managed one gets them from `<node>/change_state` through the transitions
below. rclpy's LifecycleNodeMixin enables and disables the lifecycle publishers in its own transition callbacks,
which these call.
"""

from __future__ import annotations

from collections.abc import Callable

from rclpy.lifecycle import LifecycleNodeMixin, LifecycleState, TransitionCallbackReturn

from .parameters import StartupError

# How long cleanup and shutdown wait for a forward pass in progress before releasing the model anyway (the
# running pass keeps the engine alive until it returns, and its result is dropped).
RELEASE_WAIT_S = 10.0


class ManagedSteps(LifecycleNodeMixin):
    """The transition callbacks of a managed node (see the module docstring)."""

    _configure_error = ""  # why the last configure failed, shown in /diagnostics

    def on_configure(self, state: LifecycleState) -> TransitionCallbackReturn:
        result, self._configure_error = self._run_step("configure", self._configure)
        if result != TransitionCallbackReturn.SUCCESS:
            self._release(RELEASE_WAIT_S)  # whatever the failed configure had built; the node stays unconfigured
            return result
        return super().on_configure(state)

    def on_activate(self, state: LifecycleState) -> TransitionCallbackReturn:
        result = super().on_activate(state)  # enables the managed publishers
        if result == TransitionCallbackReturn.SUCCESS:
            result, _ = self._run_step("activate", self._activate)
        if result != TransitionCallbackReturn.SUCCESS:
            self._deactivate()
            super().on_deactivate(state)
        return result

    def on_deactivate(self, state: LifecycleState) -> TransitionCallbackReturn:
        waiting = self._deactivate()
        self.get_logger().info(f"inactive: not fusing ({waiting} waiting pair(s) dropped)")
        return super().on_deactivate(state)

    def on_cleanup(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._tear_down("cleanup")
        self.get_logger().info("unconfigured: model released")
        return super().on_cleanup(state)

    def on_shutdown(self, state: LifecycleState) -> TransitionCallbackReturn:
        self._tear_down("shutdown")
        self.finished.set_result(True)
        self.get_logger().info("finalized")
        return super().on_shutdown(state)

    def on_error(self, state: LifecycleState) -> TransitionCallbackReturn:
        # A transition raised: back to unconfigured with nothing held, ready for another configure.
        self._tear_down("error")
        return super().on_error(state)

    def _tear_down(self, transition: str) -> None:
        """Deactivates if active and releases the configuration."""
        if self._active:
            self._deactivate()
        if not self._release(RELEASE_WAIT_S):
            self.get_logger().warning(f"a forward pass was still running at {transition}: its model is freed when "
                                      "it returns, and its result is dropped")

    def _run_step(self, transition: str, step: Callable[[], None]) -> tuple[TransitionCallbackReturn, str]:
        """Runs `step` for a transition: StartupError fails it, any other exception is an error; both are logged
        with the reason (rclpy would turn an exception into ERROR without a word). Returns the result and the
        reason ("" on success)."""
        try:
            step()
        except StartupError as exc:
            reason = f"{transition} failed: {exc}"
            result = TransitionCallbackReturn.FAILURE
        except Exception as exc:  # noqa: BLE001 - reported through the transition's result
            reason = f"{transition} failed ({type(exc).__name__}): {exc}"
            result = TransitionCallbackReturn.ERROR
        else:
            return TransitionCallbackReturn.SUCCESS, ""
        self.get_logger().error(reason)
        return result, reason
