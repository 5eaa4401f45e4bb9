"""Side jobs of the training loop, as hooks: the loop does the step math and calls these at fixed points; each
hook decides its own timing (`should_save`, `should_validate`, ...). A test injects behaviour by passing a hook.

Points, in the order the loop reaches them:
- `preflight(world)`        before anything is written: check what the hook needs (files, settings), one-line error
- `on_start(t)`             before the first step (after a resume has restored the state)
- `before_step(t, step)`    before the step's rows are read
- `after_backward(t, step)` gradients of the step are complete (before clipping and the update)
- `after_step(t, step)`     the step is applied and its row emitted (`t.state.step == step`)
- `before_save(t, step)`    a checkpoint of `step` is about to be written (make logs durable)
- `on_row(t, row)`          every metrics row (train, val, bench, skip) as it is emitted
- `on_message(t, text)`     a line for the user (switch, stop, compile, ...)
- `on_end(t)`               all steps done; `on_close(t)` always, last (also after an error or a stop)
Hooks run in list order at every point (`default_hooks` fixes that order), except `on_close`: in reverse, as
nested resources unwind, so that a hook closing late (the checkpoint writer) can still emit rows to the metrics
log and the trackers, which were started first.
"""
from __future__ import annotations


class Hook:
    def preflight(self, world) -> None: ...
    def on_start(self, t) -> None: ...
    def before_step(self, t, step: int) -> None: ...
    def after_backward(self, t, step: int) -> None: ...
    def after_step(self, t, step: int) -> None: ...
    def before_save(self, t, step: int) -> None: ...
    def on_row(self, t, row: dict) -> None: ...
    def on_message(self, t, text: str) -> None: ...
    def on_end(self, t) -> None: ...
    def on_close(self, t) -> None: ...


class Hooks:
    """A list of hooks called as one: `hooks.after_step(t, step)` calls every hook's `after_step` in order.
    `on_close` reaches every hook even when one of them fails (the first failure is raised afterwards)."""

    def __init__(self, hooks: list[Hook]):
        self.items = list(hooks)

    def __getattr__(self, point: str):
        if point.startswith("_") or not hasattr(Hook, point):
            raise AttributeError(point)

        def call(*args) -> None:
            for h in self.items:
                getattr(h, point)(*args)
        return call

    def on_close(self, t) -> None:
        error = None
        for h in reversed(self.items):
            try:
                h.on_close(t)
            except BaseException as e:  # noqa: BLE001 - keep closing the others, then report the first
                error = error or e
        if error is not None:
            raise error
