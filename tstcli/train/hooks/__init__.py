"""Side jobs of the training loop, as hooks: the loop does the step math and calls these at fixed points; each
hook decides its own timing (`should_save`, `should_validate`, ...) and owns its own state. A hook acts on the run
only through the trainer's methods (`say`, `emit`, `flush`, `reset_optimizer`, `record_val`, the stop controller
`t.stop`): it never assigns a trainer attribute (a test checks). A test injects behaviour by passing
a hook.

Points, in the order the loop reaches them:
- `preflight(world)`        before anything is written: check what the hook needs (files, settings), one-line error
- `on_start(t)`             before the first step (after a resume has restored the state)
- `before_step(t, step)`    before the step's rows are read
- `after_backward(t, step)` gradients of the step are complete (before clipping and the update)
- `after_step(t, step)`     the step is applied and its row queued (`t.state.step == step`)
- `before_save(t, step)`    a checkpoint of `step` is about to be written (make logs durable)
- `complete_row(t, row)`    a train row is about to be emitted: add the fields this hook owns (speed, MFU)
- `on_row(t, row)`          every metrics row (train, val, bench, skip, checkpoint) as it is emitted
- `on_message(t, text)`     a line for the user (switch, stop, compile, ...)
- `on_end(t)`               all steps done; `on_close(t)` always, last (also after an error or a stop)

Order: each hook class has a `priority`; at every point hooks run by ascending priority (ties in list order), except
`on_close`, which runs in reverse, as nested resources unwind, so that a hook closing late (the checkpoint writer)
can still emit rows to the metrics log and the trackers, which started first. The priorities, lowest first:
rows are completed (`Speed`) before they are written (`MetricsLog`, trackers, `Console`); signals are caught before
anything long runs; `model.init_from`'s weights are loaded before the step-0 evaluation; the switch happens before
the step's side jobs; a checkpoint is written last, after everything else of its step.
"""
from __future__ import annotations


class Hook:
    priority = 50  # see the module docstring

    def preflight(self, world) -> None: ...
    def on_start(self, t) -> None: ...
    def before_step(self, t, step: int) -> None: ...
    def after_backward(self, t, step: int) -> None: ...
    def after_step(self, t, step: int) -> None: ...
    def before_save(self, t, step: int) -> None: ...
    def complete_row(self, t, row: dict) -> None: ...
    def on_row(self, t, row: dict) -> None: ...
    def on_message(self, t, text: str) -> None: ...
    def on_end(self, t) -> None: ...
    def on_close(self, t) -> None: ...


class Hooks:
    """A run's hooks called as one, by ascending priority: `hooks.after_step(t, step)` calls every hook's
    `after_step`. `on_close` reaches every hook even when one of them fails (the first failure is raised after)."""

    def __init__(self, hooks: list[Hook]):
        self.items = sorted(hooks, key=lambda h: h.priority)  # stable: equal priorities keep the list's order

    def _each(self, point: str, *args) -> None:
        for h in self.items:
            getattr(h, point)(*args)

    def preflight(self, world) -> None: self._each("preflight", world)
    def on_start(self, t) -> None: self._each("on_start", t)
    def before_step(self, t, step: int) -> None: self._each("before_step", t, step)
    def after_backward(self, t, step: int) -> None: self._each("after_backward", t, step)
    def after_step(self, t, step: int) -> None: self._each("after_step", t, step)
    def before_save(self, t, step: int) -> None: self._each("before_save", t, step)
    def complete_row(self, t, row: dict) -> None: self._each("complete_row", t, row)
    def on_row(self, t, row: dict) -> None: self._each("on_row", t, row)
    def on_message(self, t, text: str) -> None: self._each("on_message", t, text)
    def on_end(self, t) -> None: self._each("on_end", t)

    def on_close(self, t) -> None:
        error = None
        for h in reversed(self.items):
            try:
                h.on_close(t)
            except BaseException as e:  # noqa: BLE001 - keep closing the others, then report the first
                error = error or e
        if error is not None:
            raise error
