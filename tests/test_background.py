"""A stage beside another: thread shares, results, errors and cancellation."""

from __future__ import annotations

import threading

import pytest
import torch

from dip_uq.background import Cancelled, beside


@pytest.fixture
def four_threads():
    before = torch.get_num_threads()
    torch.set_num_threads(4)
    yield
    torch.set_num_threads(before)


def test_the_job_and_the_block_share_the_threads_and_the_count_is_restored(four_threads):
    def job(check):
        check()
        return torch.get_num_threads(), threading.current_thread() is threading.main_thread()

    with beside(job) as background:
        inside = torch.get_num_threads()
        threads, on_main = background.result()
    assert (threads, inside, on_main) == (2, 2, False)
    assert torch.get_num_threads() == 4


def test_one_thread_or_disabled_leaves_the_job_to_the_caller(four_threads):
    with beside(lambda check: 1, enabled=False) as background:
        assert background is None and torch.get_num_threads() == 4
    torch.set_num_threads(1)
    with beside(lambda check: 1) as background:
        assert background is None


def test_the_jobs_error_reaches_the_caller(four_threads):
    def job(check):
        raise ValueError("bad scan")

    with pytest.raises(ValueError, match="bad scan"), beside(job) as background:
        background.result()
    assert torch.get_num_threads() == 4


def test_an_error_in_the_block_cancels_the_job(four_threads):
    started, steps = threading.Event(), []

    def job(check):
        started.set()
        while True:  # a long fit that checks between its steps
            steps.append(1)
            check()
            threading.Event().wait(0.01)

    with pytest.raises(KeyboardInterrupt), beside(job) as background:
        started.wait()
        raise KeyboardInterrupt
    with pytest.raises(Cancelled):
        background.result()
    assert steps and torch.get_num_threads() == 4
