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


def test_python_runs_while_the_engine_works(tiny_sd):
    """A watcher thread sees the pipeline busy: Python code ran while the engine held the pipeline in
    native code. The generation has no callback, so an engine holding the GIL would let no Python run
    from the moment it took the pipeline until it let go (the watcher would never see it busy)."""
    seen_busy, stop = threading.Event(), threading.Event()

    def watch():
        while not stop.is_set() and not seen_busy.is_set():
            if tiny_sd.busy:
                seen_busy.set()

    watcher = threading.Thread(target=watch)
    watcher.start()
    try:
        assert not tiny_sd.busy
        tiny_sd("a cat", num_inference_steps=8, width=128, height=128, seed=0)
    finally:
        stop.set()
        watcher.join()
    assert seen_busy.is_set()
    assert not tiny_sd.busy


def test_two_pipelines_generate_at_once():
    """Each generation's first step waits until the other generation has run a step too: both are in
    flight together (two threads, two pipelines; the first is still running when the second starts)."""
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


def test_an_asyncio_loop_runs_while_the_engine_works(tiny_sd):
    """`await asyncio.to_thread(pipe, ...)`: the first step waits until the event loop has run on
    after starting the job, so the loop was live while the generation was in flight."""
    import asyncio

    loop_ran = threading.Event()

    def callback(step, timestep, elapsed):
        if step == 0 and not loop_ran.wait(STUCK_S):
            raise RuntimeError("the event loop did not run while the engine worked")

    async def main():
        job = asyncio.create_task(asyncio.to_thread(
            tiny_sd, "a cat", num_inference_steps=2, width=64, height=64, seed=0, callback=callback))
        await asyncio.sleep(0)
        while not job.done():
            loop_ran.set()
            await asyncio.sleep(0.001)
        return await job

    assert asyncio.run(main()).images[0].size == (64, 64)
