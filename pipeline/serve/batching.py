"""Throughput without weakening durability: group commit of ledger charges and dynamic batching of decodes.

Both are drop-in wrappers of the components that :class:`pipeline.DPRDMPipeline` is built from, so the service
runs the very same mechanism code as ``dprdm generate`` (encode, charge, retrieve, noise, mix, decode):

* :class:`GroupCommitLedger` wraps an :class:`accountant.Ledger`. Its ``charge`` hands the request to one
  committer thread and blocks until the charge is committed. The committer takes every charge waiting at that
  moment (up to ``max_group``) and commits them with :meth:`accountant.Ledger.charge_many`: one
  ``BEGIN IMMEDIATE`` transaction and one fsync for the group, each charge still all-or-none and checked against
  the budget at commit, in arrival order. ``charge`` returns (and the retriever goes on to search and release)
  only after that commit, exactly as with a plain ledger. Groups form naturally: while one group is being
  fsynced the next one queues up; nothing waits on a timer, so a lone request is not delayed.
* :class:`BatchingDecoder` wraps a decoder. Its ``generate`` hands the already-private conditions to one decoder
  thread; the thread takes every waiting request with the same settings (images per condition, steps,
  guidance) up to ``max_batch`` condition rows and runs them as one decoder call, then splits the images back.
  Decoding is post-processing of released vectors, so batching changes nothing in the privacy accounting. With
  ``max_batch=1`` it decodes one request at a time (the baseline of the benchmark).
"""

from __future__ import annotations

import queue
import threading
from collections import deque
from collections.abc import Mapping, Sequence
from concurrent.futures import Future
from dataclasses import dataclass, field
from typing import Any

__all__ = ["BatchingDecoder", "GroupCommitLedger", "LockedEncoder"]

_STOP = object()


class GroupCommitLedger:
    """An :class:`accountant.Ledger` whose concurrent ``charge`` calls are committed in groups (one fsync each).

    Every other attribute (``ledger_id``, ``path``, ``status``, ``scopes`` ...) is the wrapped ledger's.

    Args:
        ledger: the index's own ledger.
        max_group: most charges per transaction.
    """

    def __init__(self, ledger: Any, *, max_group: int = 256) -> None:
        self._ledger = ledger
        self._max_group = int(max_group)
        self._queue: queue.Queue[Any] = queue.Queue()
        self.groups_committed = 0
        self.charges_committed = 0
        self._thread = threading.Thread(target=self._run, name="dprdm-group-commit", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._ledger, name)

    def charge(
        self,
        scopes: str | Sequence[str],
        *,
        event: Any = None,
        count: int = 1,
        records: Mapping[str, int] | None = None,
        caller: str | None = None,
        purpose: str | None = None,
    ) -> Any:
        """:meth:`accountant.Ledger.charge`, committed together with the other charges waiting at that moment.

        Returns only after the group's transaction committed. Raises exactly what ``Ledger.charge`` raises.
        """
        from accountant import ChargeRequest

        names = (scopes,) if isinstance(scopes, str) else tuple(scopes)
        request = ChargeRequest(scopes=names, event=event, count=count, records=records, caller=caller, purpose=purpose)
        future: Future[Any] = Future()
        self._queue.put((request, future))
        outcome = future.result()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            if item is _STOP:
                return
            group = [item]
            while len(group) < self._max_group:
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is _STOP:
                    self._queue.put(_STOP)
                    break
                group.append(more)
            try:
                outcomes: list[Any] = self._ledger.charge_many([request for request, _ in group])
            except BaseException as err:  # the transaction failed: every charge of the group is refused
                outcomes = [err] * len(group)
            else:
                self.groups_committed += 1
                self.charges_committed += sum(1 for o in outcomes if not isinstance(o, BaseException))
            for (_, future), outcome in zip(group, outcomes, strict=True):
                future.set_result(outcome)

    def close(self) -> None:
        """Stop the committer thread (after the charges already queued)."""
        self._queue.put(_STOP)
        self._thread.join(timeout=30)


@dataclass
class _Job:
    conditions: Any
    settings: tuple[int, int, float]
    generator: Any = None
    future: Future = field(default_factory=Future)


class BatchingDecoder:
    """A decoder whose concurrent ``generate`` calls are run as one call, up to ``max_batch`` condition rows.

    Args:
        decoder: a :class:`pipeline.decoders.Decoder`.
        max_batch: most condition rows per decoder call (1 = one request at a time).
    """

    def __init__(self, decoder: Any, *, max_batch: int = 16) -> None:
        self._decoder = decoder
        self._max_batch = max(1, int(max_batch))
        self._queue: queue.Queue[Any] = queue.Queue()
        self.calls = 0
        self.rows = 0
        self._thread = threading.Thread(target=self._run, name="dprdm-decode-batcher", daemon=True)
        self._thread.start()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._decoder, name)

    def generate(
        self,
        conditions: Any,
        *,
        num_images_per_condition: int = 1,
        steps: int = 25,
        guidance_scale: float = 2.0,
        generator: Any = None,
    ) -> list[Any]:
        """``Decoder.generate``, possibly batched with other waiting requests of the same settings.

        A request with its own ``generator`` (a seeded decode) is run alone, so its images stay reproducible.
        """
        job = _Job(conditions, (int(num_images_per_condition), int(steps), float(guidance_scale)), generator)
        self._queue.put(job)
        outcome = job.future.result()
        if isinstance(outcome, BaseException):
            raise outcome
        return outcome

    def _run(self) -> None:
        pending: deque[_Job] = deque()
        while True:
            first = pending.popleft() if pending else self._queue.get()
            if first is _STOP:
                return
            while True:  # everything that arrived while the last batch was decoding
                try:
                    pending.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            batch, rows, rest = [first], len(first.conditions), deque()
            for job in pending:
                if (
                    job is not _STOP
                    and rows + len(job.conditions) <= self._max_batch
                    and job.settings == first.settings
                    and first.generator is None
                    and job.generator is None
                ):
                    batch.append(job)
                    rows += len(job.conditions)
                else:
                    rest.append(job)
            pending = rest
            self._decode(batch)

    def _decode(self, batch: list[_Job]) -> None:
        import torch

        n, steps, guidance = batch[0].settings
        try:
            conditions = torch.cat([job.conditions for job in batch], dim=0)
            images = self._decoder.generate(
                conditions,
                num_images_per_condition=n,
                steps=steps,
                guidance_scale=guidance,
                generator=batch[0].generator,
            )
            self.calls += 1
            self.rows += len(conditions)
        except BaseException as err:
            for job in batch:
                job.future.set_result(err)
            return
        start = 0
        for job in batch:
            size = len(job.conditions) * n
            job.future.set_result(list(images[start : start + size]))
            start += size

    def close(self) -> None:
        """Stop the decoder thread (after the requests already queued)."""
        self._queue.put(_STOP)
        self._thread.join(timeout=60)


class LockedEncoder:
    """The index's encoder with one lock around its towers (tokenizers and models are not re-entrant)."""

    def __init__(self, encoder: Any) -> None:
        self._encoder = encoder
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._encoder, name)

    def encode_text(self, texts: Any) -> Any:
        with self._lock:
            return self._encoder.encode_text(texts)

    def encode_images(self, images: Any) -> Any:
        with self._lock:
            return self._encoder.encode_images(images)
