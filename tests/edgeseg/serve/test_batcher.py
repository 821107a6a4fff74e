"""Dynamic batching without a server: which requests share a call, and what each gets back."""

from __future__ import annotations

import numpy as np
import pytest

from edgeseg.serve import Batcher


def _recording(calls):
    def run(batch):
        calls.append(len(batch))
        if np.any(batch < 0):
            raise ValueError("negative input")
        return batch * 2
    return run


def test_waiting_requests_share_calls_up_to_max_batch_and_each_gets_its_own_rows():
    calls: list[int] = []
    batcher = Batcher(_recording(calls), max_batch=4, max_delay=0.0, name="m")
    # Queued before the worker starts, as under load: the worker takes what waits, at once.
    futures = [batcher.submit(np.full((n, 2), i, np.float32)) for i, n in enumerate([1, 2, 1, 3, 1])]
    batcher.start()
    results = [f.result(10) for f in futures]
    batcher.close()
    assert calls == [4, 4]  # [1+2+1], then [3+1]: a request's rows never split across calls
    for i, (n, result) in enumerate(zip([1, 2, 1, 3, 1], results)):
        assert np.array_equal(result.output, np.full((n, 2), 2 * i, np.float32))
    assert [r.batch for r in results] == [4, 4, 4, 4, 4]


def test_a_failed_call_fails_its_requests_only_and_close_runs_what_was_submitted():
    calls: list[int] = []
    batcher = Batcher(_recording(calls), max_batch=2, max_delay=0.0, name="m")
    bad = batcher.submit(np.full((1, 1), -1, np.float32))
    shared = batcher.submit(np.ones((1, 1), np.float32))
    batcher.start()
    with pytest.raises(ValueError, match="negative"):
        bad.result(10)
    with pytest.raises(ValueError):  # it rode in the same call
        shared.result(10)
    later = batcher.submit(np.ones((1, 1), np.float32))
    batcher.close()
    assert later.result(0).output[0, 0] == 2.0  # close() ran it before stopping
    with pytest.raises(RuntimeError, match="shutting down"):
        batcher.submit(np.ones((1, 1), np.float32))
    with pytest.raises(ValueError, match="max_batch"):
        Batcher(_recording(calls), max_batch=2, max_delay=0.0, name="m").submit(np.ones((3, 1), np.float32))


def test_a_batch_waits_only_for_requests_announced_on_their_way():
    calls: list[int] = []
    batcher = Batcher(_recording(calls), max_batch=4, max_delay=60.0, name="m").start()
    # Nobody else announced: a lone request runs at once, not after the 60 s window.
    assert batcher.submit(np.ones((1, 1), np.float32)).result(10).batch == 1
    # Two announced: the first waits for the second, and they share one call.
    batcher.expect()
    batcher.expect()
    first = batcher.submit(np.ones((1, 1), np.float32), expected=True)
    second = batcher.submit(np.ones((1, 1), np.float32), expected=True)
    assert first.result(10).batch == second.result(10).batch == 2
    # An announced request that fails before submitting releases the one waiting for it.
    batcher.expect()
    batcher.expect()
    waiting = batcher.submit(np.ones((1, 1), np.float32), expected=True)
    batcher.forget()
    assert waiting.result(10).batch == 1
    batcher.close()
    assert calls == [1, 2, 1]
