"""A profiler window: steps `train.profile_steps = [first, last]` run under `torch.profiler`, and the trace is
written as a Chrome trace (open it in https://ui.perfetto.dev or TensorBoard's profiler) to
`profile/trace-steps-FIRST-LAST-rankR.json` in the run directory."""
from __future__ import annotations

import torch

from tstcli.train.hooks import Hook


class Profiler(Hook):
    priority = 45  # around the steps, after the switch

    def __init__(self, first: int, last: int):
        self.first, self.last = first, last
        self.prof = None
        self.started = 0

    def before_step(self, t, step: int) -> None:
        if self.prof is None and self.first <= step <= self.last:
            activities = [torch.profiler.ProfilerActivity.CPU]
            if t.device.type == "cuda":
                activities.append(torch.profiler.ProfilerActivity.CUDA)
            self.prof = torch.profiler.profile(activities=activities, record_shapes=True)
            self.prof.__enter__()
            self.started = step

    def after_step(self, t, step: int) -> None:
        if self.prof is not None and step >= self.last:
            self._finish(t, step)

    def on_close(self, t) -> None:
        if self.prof is not None:  # stopped inside the window: keep what was recorded
            self._finish(t, t.state.step)

    def _finish(self, t, step: int) -> None:
        prof, self.prof = self.prof, None
        prof.__exit__(None, None, None)
        out = t.run_dir / "profile" / f"trace-steps-{self.started:08d}-{step:08d}-rank{t.world.rank}.json"
        out.parent.mkdir(parents=True, exist_ok=True)
        prof.export_chrome_trace(str(out))
        t.say(f"profile: steps {self.started}-{step} traced to {out} (open in https://ui.perfetto.dev)")
