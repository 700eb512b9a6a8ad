"""The engine runs without the GIL: two pipelines generate at once; Ctrl-C and a raising callback
cancel between steps."""

from __future__ import annotations

import _thread
import threading

import pytest

import lcm
from conftest import FIXTURES

# A bound for waits that only a broken build reaches (not a timing assertion: the test passes as soon
# as both generations are seen running).
STUCK_S = 120


def test_two_pipelines_generate_at_once():
    """Each generation's first step waits until the other generation has run a step too: both are in
    flight together, which a call holding the GIL would make impossible (the second could not start
    until the first returned, and the first would wait in vain)."""
    pipes = [lcm.Pipeline.from_pretrained(FIXTURES / "tiny-sd", device="cpu") for _ in range(2)]
    started = [threading.Event(), threading.Event()]
    results, errors = [None, None], []

    def run(i):
        def callback(step, timestep, elapsed):
            started[i].set()
            if not started[1 - i].wait(STUCK_S):
                raise RuntimeError(f"generation {1 - i} never ran while generation {i} was in flight")

        try:
            results[i] = pipes[i]("a cat", num_inference_steps=3, width=64, height=64, seed=i, callback=callback)
        except Exception as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    assert all(r is not None and r.images[0].size == (64, 64) for r in results)


def test_one_pipeline_serves_threads_in_turn(tiny_sd):
    """Calls on one pipeline from two threads take turns and give each its own images."""
    alone = [tiny_sd("a cat", num_inference_steps=2, width=64, height=64, seed=s, output_type="uint8").images
             for s in (1, 2)]
    got = [None, None]

    def run(i):
        got[i] = tiny_sd("a cat", num_inference_steps=2, width=64, height=64, seed=i + 1, output_type="uint8").images

    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    [t.start() for t in threads]
    [t.join() for t in threads]
    assert all((g == a).all() for g, a in zip(got, alone))


def test_ctrl_c_cancels_between_steps(tiny_sd):
    steps = []

    def callback(step, timestep, elapsed):
        steps.append(step)
        if step == 0:
            _thread.interrupt_main()  # as Ctrl-C: SIGINT's Python handler on the main thread

    with pytest.raises(KeyboardInterrupt):
        tiny_sd("a cat", num_inference_steps=8, width=64, height=64, seed=0, callback=callback)
    assert steps and steps[-1] < 7, steps
    # The pipeline is usable afterwards.
    assert tiny_sd("a cat", num_inference_steps=1, width=64, height=64, seed=0).images[0].size == (64, 64)


def test_a_raising_callback_cancels_and_raises(tiny_sd):
    steps = []

    def callback(step, timestep, elapsed):
        steps.append((step, timestep))
        if step == 1:
            raise RuntimeError("stop here")

    with pytest.raises(RuntimeError, match="stop here"):
        tiny_sd("a cat", num_inference_steps=8, width=64, height=64, seed=0, callback=callback)
    assert [s for s, _ in steps] == [0, 1] and steps[0][1] == 999.0
