"""worker/loops.Loop, the one shape of the worker's background threads: steps an interval apart, at once again after
AGAIN, ended by DONE or stop(), a failing step logged and survived, finished() on the way out."""

from __future__ import annotations

import threading
import time

from worker.loops import AGAIN, DONE, Loop


class Steps(Loop):
    def __init__(self, plan: list, *, interval: float, wait_first: bool = False) -> None:
        super().__init__("test-loop", interval=interval, wait_first=wait_first)
        self.plan = list(plan)
        self.times: list[float] = []
        self.ended = threading.Event()

    def step(self):
        self.times.append(time.monotonic())
        action = self.plan.pop(0) if self.plan else DONE
        if isinstance(action, Exception):
            raise action
        return action

    def finished(self) -> None:
        self.ended.set()


def test_steps_wait_the_interval_unless_again_and_survive_errors() -> None:
    loop = Steps([None, AGAIN, RuntimeError("a bad pass"), None], interval=0.3)
    started = time.monotonic()
    loop.start()
    assert loop.ended.wait(10)
    gaps = [b - a for a, b in zip(loop.times, loop.times[1:], strict=False)]
    assert len(loop.times) == 5  # four planned steps, then DONE
    assert loop.times[0] - started < 0.25  # the first step at once
    assert gaps[0] >= 0.29 and gaps[1] < 0.25  # None waits, AGAIN does not
    assert gaps[2] >= 0.29 and gaps[3] >= 0.29  # after the error the loop goes on, an interval later


def test_wait_first_and_stop_end_the_thread_with_finished() -> None:
    loop = Steps([None] * 1000, interval=0.2, wait_first=True)
    started = time.monotonic()
    with loop:
        time.sleep(0.5)
        assert loop.times and loop.times[0] - started >= 0.19  # one interval before the first step
    assert loop.ended.is_set() and not loop._thread.is_alive()  # the exit stopped and joined it
    count = len(loop.times)
    time.sleep(0.2)
    assert len(loop.times) == count

    never = Steps([None], interval=10, wait_first=True)
    never.start()
    never.stop(join=5)
    assert never.times == [] and never.ended.is_set()
