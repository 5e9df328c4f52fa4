"""Specification of Delivery's handover out of spool mode, on its real SpoolWatch: a steady stream of requests behind a
spool that a drainer keeps emptying ends in direct publishes, and never publishes an event ahead of an older
acknowledged (spooled) event of its key.

The spool, the drainer and the broker are small in-memory stand-ins sharing one log; what is specified is Delivery's
and the watch's decision, on the event loop's own clock.
"""

from __future__ import annotations

import asyncio
from dataclasses import dataclass, field

from cluster.adapters.kafka_producer import Delivered, PublishError, Record
from cluster.adapters.spool import SpoolUsage
from pipelines.policies.breaker import BreakerState, CircuitBreaker
from serve_app.admission import HandoverPolicy
from serve_app.delivery import Delivery, Spooled, SpoolWatch

RATE = 200  # requests/s, one event each
KEYS = 4


@dataclass
class Broker:
    up: bool = True
    log: list[str] = field(default_factory=list)  # event ids in the order the broker acknowledged them


@dataclass
class MemorySpool:
    broker: Broker
    rows: list[tuple[int, str]] = field(default_factory=list)
    seq: int = 0

    async def append(self, rows: list[tuple[str, Record]]) -> None:
        for event_id, _ in rows:
            self.seq += 1
            self.rows.append((self.seq, event_id))

    async def usage(self) -> SpoolUsage:
        await asyncio.sleep(0.002)  # a query's round trip
        return SpoolUsage(bool(self.rows), len(self.rows), 0, self.rows[0][0] if self.rows else None)

    async def drain(self) -> None:
        """The drainer: oldest rows first, deleted once the broker took them; a round takes 20 ms."""
        while True:
            batch = list(self.rows[:1_000])
            await asyncio.sleep(0.02)
            if batch and self.broker.up:
                self.broker.log += [event_id for _, event_id in batch]
                del self.rows[: len(batch)]


class MemoryPublisher:
    def __init__(self, broker: Broker) -> None:
        self._broker = broker

    async def publish_many(self, records: list[Record]) -> list[Delivered | PublishError]:
        await asyncio.sleep(0.003)
        if not self._broker.up:
            return [PublishError("no acknowledgement")] * len(records)
        out: list[Delivered | PublishError] = []
        for _, _, value, _ in records:
            self._broker.log.append(value.decode())
            out.append(Delivered("events", 0, len(self._broker.log) - 1))
        return out


Answer = tuple[float, float, str, object]  # (sent, answered: seconds from the start), event id, outcome


async def steady_stream(broker: Broker, seconds: float) -> tuple[list[Answer], BreakerState]:
    """Events k{n % KEYS}-e{n} at RATE/s behind 50 spooled rows, through one Delivery; each one's answer."""
    loop = asyncio.get_running_loop()
    spool = MemorySpool(broker)
    await spool.append([(f"old{n}", ("events", None, b"", None)) for n in range(50)])
    clock = [0.0]
    breaker = CircuitBreaker("kafka", failure_threshold=1, reset_timeout_s=1.0, clock=lambda: clock[0])
    breaker.record_failure("blackhole")
    clock[0] = 1.0  # half-open: the next call is a probe
    watch = SpoolWatch(spool)  # type: ignore[arg-type]
    delivery = Delivery(
        MemoryPublisher(broker),  # type: ignore[arg-type]
        breaker,
        spool,  # type: ignore[arg-type]
        watch,
        10_000,
        handover=HandoverPolicy(max_wait_s=0.5, max_rows=1_000, cooldown_s=1.0),
    )
    await watch.refresh()
    tasks = [asyncio.create_task(watch.run()), asyncio.create_task(spool.drain())]
    answers: list[Answer] = []
    started = loop.time()

    async def send(event_id: str) -> None:
        sent = loop.time() - started
        (outcome,) = await delivery.deliver([(event_id, ("events", None, event_id.encode(), None))])
        answers.append((sent, loop.time() - started, event_id, outcome))

    requests = []
    for n in range(int(seconds * RATE)):
        requests.append(asyncio.create_task(send(f"k{n % KEYS}-e{n}")))
        await asyncio.sleep(1 / RATE)
    await asyncio.gather(*requests)
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)
    return answers, delivery.breaker.state


def test_a_steady_stream_behind_a_draining_spool_is_published_directly_within_a_second():
    broker = Broker(up=True)
    answers, breaker = asyncio.run(steady_stream(broker, seconds=1.5))
    published = [answered for _, answered, _, outcome in answers if isinstance(outcome, Delivered)]
    spooled_late = [e for sent, _, e, outcome in answers if sent > 1.0 and isinstance(outcome, Spooled)]
    assert published and min(published) < 1.0, answers[:20]
    assert spooled_late == [] and breaker is BreakerState.CLOSED
    # every event on the broker once, and none ahead of an event of its key acknowledged before it was sent
    assert sorted(broker.log) == sorted([f"old{n}" for n in range(50)] + [e for _, _, e, _ in answers])
    at = {event_id: i for i, event_id in enumerate(broker.log)}
    switched = 0
    for _, older_answered, older, older_outcome in answers:
        for newer_sent, _, newer, newer_outcome in answers:
            if older.split("-")[0] == newer.split("-")[0] and older_answered < newer_sent:
                assert at[older] < at[newer], f"{newer} reached the broker before {older}"
                switched += isinstance(older_outcome, Spooled) and isinstance(newer_outcome, Delivered)
    assert switched > 0  # spooled events, then direct ones of the same keys
    assert max(at[f"old{n}"] for n in range(50)) < min(at[e] for _, _, e, _ in answers)


def test_with_the_broker_still_down_the_stream_keeps_going_to_the_spool():
    broker = Broker(up=False)
    answers, breaker = asyncio.run(steady_stream(broker, seconds=0.5))
    assert {type(outcome) for _, _, _, outcome in answers} == {Spooled}
    assert broker.log == [] and breaker is not BreakerState.CLOSED


class GatedSpool:
    """A spool whose usage query answers only when the test opens the gate: a look that is under way."""

    def __init__(self) -> None:
        self.gate = asyncio.Event()
        self.oldest: int | None = 5

    async def usage(self) -> SpoolUsage:
        await self.gate.wait()
        self.gate.clear()
        return SpoolUsage(self.oldest is not None, 0 if self.oldest is None else 1, 0, self.oldest)


def test_a_waiting_request_is_served_only_by_a_look_that_began_after_it_asked():
    async def scenario() -> tuple[bool, bool, int, bool]:
        spool = GatedSpool()
        watch = SpoolWatch(spool)  # type: ignore[arg-type]
        under_way = asyncio.create_task(watch.refresh())  # look 1 began: it may predate a row committed now
        await asyncio.sleep(0)
        waiting = asyncio.create_task(watch.next_look())
        await asyncio.sleep(0)
        spool.gate.set()
        await under_way
        served_by_the_older_look = waiting.done()
        spool.oldest = None  # the drainer deleted the last row
        spool.gate.set()
        await watch.refresh()  # look 2 began after the request asked
        await asyncio.sleep(0)
        return served_by_the_older_look, waiting.done(), watch.applied_look, watch.draining

    served_early, served, applied, draining = asyncio.run(scenario())
    assert not served_early and served
    assert applied == 2 and draining  # the oldest row went: the drainer publishes
