"""Dynamic batching of decodes and the group-commit ledger wrapper (no server, no models)."""

from __future__ import annotations

import threading
import time

import pytest
import torch
from serve_testlib import DELTA, MECH

from accountant import BudgetExceeded, Ledger, epsilon_for
from pipeline.serve.batching import BatchingDecoder, GroupCommitLedger


class _FakeDecoder:
    """Returns one label per image: (condition value, image index); the first call blocks until released."""

    condition_dim = 2

    def __init__(self) -> None:
        self.calls: list[int] = []
        self.entered, self.release = threading.Event(), threading.Event()

    def generate(self, conditions, *, num_images_per_condition, steps, guidance_scale, generator=None):
        if not self.calls:
            self.entered.set()
            assert self.release.wait(30)
        self.calls.append(len(conditions))
        return [(float(row[0]), i) for row in conditions for i in range(num_images_per_condition)]


def _wait_for(predicate) -> None:
    deadline = time.monotonic() + 30
    while not predicate():  # readiness poll (no timing is asserted)
        assert time.monotonic() < deadline
        time.sleep(0.005)


def test_waiting_requests_are_decoded_in_one_call_and_split_back():
    fake = _FakeDecoder()
    batcher = BatchingDecoder(fake, max_batch=4)
    results: dict[float, list] = {}

    def submit(value: float, steps: int = 1) -> None:
        results[value] = batcher.generate(torch.tensor([[value, 0.0]]), num_images_per_condition=2, steps=steps)

    threads = [threading.Thread(target=submit, args=(0.0,))]
    threads[0].start()
    assert fake.entered.wait(30)
    more = [threading.Thread(target=submit, args=(float(v),)) for v in range(1, 6)]
    more.append(threading.Thread(target=submit, args=(9.0, 7)))  # other settings: never merged with the rest
    for t in more:
        t.start()
    _wait_for(lambda: batcher._queue.qsize() == 6)
    fake.release.set()
    for t in threads + more:
        t.join()
    batcher.close()
    assert fake.calls[0] == 1 and sorted(fake.calls[1:]) == [1, 1, 4]  # 5 waiting same-settings rows: 4 + 1
    for value, images in results.items():
        assert images == [(value, 0), (value, 1)]  # every request got exactly its own images back
    assert batcher.condition_dim == 2


def test_max_batch_one_decodes_one_request_at_a_time():
    fake = _FakeDecoder()
    fake.release.set()
    batcher = BatchingDecoder(fake, max_batch=1)
    threads = [threading.Thread(target=batcher.generate, args=(torch.zeros(1, 2),), kwargs={"steps": 1})
               for _ in range(5)]  # fmt: skip
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    batcher.close()
    assert fake.calls == [1] * 5


def test_decoder_errors_reach_every_request_of_the_batch():
    class Broken(_FakeDecoder):
        def generate(self, *args, **kwargs):
            raise RuntimeError("decoder failed")

    batcher = BatchingDecoder(Broken(), max_batch=4)
    with pytest.raises(RuntimeError, match="decoder failed"):
        batcher.generate(torch.zeros(1, 2), steps=1)
    batcher.close()


def test_group_commit_ledger_charges_exactly_m_and_forwards_everything(tmp_path):
    book = Ledger(tmp_path / "budget.sqlite")
    book.create_scope("s", epsilon=epsilon_for(MECH, queries=20, delta=DELTA), delta=DELTA, mechanism=MECH, records=50)
    grouped = GroupCommitLedger(book)
    assert grouped.ledger_id == book.ledger_id and grouped.scopes() == ["s"]
    barrier, ok, refused = threading.Barrier(8), [], []

    def worker() -> None:
        barrier.wait()
        for _ in range(4):
            try:
                receipt = grouped.charge(["s"], caller="t")
            except BudgetExceeded:
                refused.append(1)
            else:
                ok.append(receipt.group_id)

    threads = [threading.Thread(target=worker) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    grouped.close()
    assert len(ok) == 20 and len(refused) == 12
    assert {row.group_id for row in book.history("s")} == set(ok)
    assert grouped.charges_committed == 20 and grouped.groups_committed <= 32
    assert book.verify().ok
