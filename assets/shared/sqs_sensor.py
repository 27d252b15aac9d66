"""A generic SQS sensor: a queue, a message parser, and a handler that says what to request.

S3 event notifications, DMS change files and snapshot requests all sit on it.
A message is deleted only when the handler says it is done, which handlers
say once the runs it caused exist in the instance (or its work is already
applied), never in the tick that asks for those runs: the daemon creates the
runs after the tick returns, and a daemon killed in between must not lose the
message. Until then the message stays in flight and comes back after its
visibility timeout. A message the parser rejects is never deleted, so the
queue's redrive policy moves it to the dead-letter queue.

With `listen_seconds`, a tick does not end when the queue is empty: it keeps
long-polling for that long and hands each batch to the handler as it arrives,
so work the handler finishes itself (a reused report snapshot) is answered in
well under a second instead of at the next tick, 5 s later. Once a batch asks
for runs, the tick ends when no batch has come for LINGER_SECONDS (a burst still
arriving stays in the same tick), since runs are only created once it returns.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, Generic, TypeVar

import dagster as dg

T = TypeVar("T")


class MalformedMessage(ValueError):
    """A message the parser cannot read; it is left for the dead-letter queue."""


@dataclass(frozen=True)
class Received(Generic[T]):
    message_id: str
    receipt_handle: str
    body: str
    parsed: T
    receive_count: int


@dataclass
class Handled:
    """What a handler decided for one tick's messages."""

    run_requests: list[dg.RunRequest] = field(default_factory=list)
    done: set[str] = field(default_factory=set)  # message ids that may be deleted now
    dynamic_partitions_requests: list[Any] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)  # shown as the tick's skip reason when nothing runs
    asset_events: list[Any] = field(default_factory=list)  # e.g. materializations of external assets
    # Work for runs that the sensor's `plan_runs` turns into run requests once the tick's last batch
    # is handled, so that a burst received in several batches is planned as one.
    to_plan: list[Any] = field(default_factory=list)

    def merge(self, other: Handled) -> None:
        self.run_requests.extend(other.run_requests)
        self.done |= other.done
        self.dynamic_partitions_requests.extend(other.dynamic_partitions_requests)
        self.notes.extend(other.notes)
        self.asset_events.extend(other.asset_events)
        self.to_plan.extend(other.to_plan)

    @property
    def asks(self) -> bool:
        return bool(
            self.run_requests or self.dynamic_partitions_requests or self.asset_events or self.to_plan
        )


Handler = Callable[[dg.SensorEvaluationContext, Sequence[Received[Any]]], Handled]
# Once a batch asked for runs, how long a listening tick waits for more of the burst after the
# last batch before it ends (so that the runs are created).
LINGER_SECONDS = 0.5
# Below this much time left, a listening tick polls every SHORT_POLL_SECONDS instead of
# long-polling (SQS waits in whole seconds).
SHORT_POLL_SECONDS = 0.1


# The sensor daemon's loop comes round every 5 s (dagster/_daemon/sensor.py, MIN_INTERVAL_LOOP_TIME).
DAEMON_LOOP_SECONDS = 5.0
MAX_LATE_SECONDS = 2.0  # a larger estimate is taken for a phase change (a daemon restart): 0


def loop_started_at(context: dg.SensorEvaluationContext) -> float:
    """When the daemon's loop came round for this tick (wall clock), else now (under test).

    The tick record's timestamp is when the daemon made the tick, some time after its loop came
    round (more on a busy machine). The loop comes round every 5 s, so the recent ticks' records
    fall at the same phase plus their own delays; the earliest among them marks the loop. A
    listening tick counts its window from there, so that it ends before the loop comes round
    again: a tick still running then is passed over, and the next starts only 5 s later."""
    key = context.log_key or []
    if not (len(key) == 3 and key[2].isdigit()):
        return time.time()
    try:
        storage = context.instance.schedule_storage
        assert storage is not None
        tick = storage.get_tick(int(key[2]))
        recent = storage.get_ticks(
            tick.tick_data.instigator_origin_id,
            tick.tick_data.selector_id or "",
            after=tick.timestamp - 60,
            limit=12,
        )
    except Exception:  # a timing hint only: without the tick records, the window starts now
        return time.time()
    late = 0.0
    for other in recent:
        behind = (tick.timestamp - other.timestamp) % DAEMON_LOOP_SECONDS  # this tick's delay less other's
        if behind < DAEMON_LOOP_SECONDS / 2:
            late = max(late, behind)
    return tick.timestamp - (late if late <= MAX_LATE_SECONDS else 0.0)


def sqs_sensor(
    name: str,
    *,
    queue_name: Callable[[], str],
    parse: Callable[[str], Any],
    handle: Handler,
    asset_selection: dg.AssetSelection | None = None,
    required_resource_keys: set[str] | None = None,
    max_messages: int = 100,
    visibility_timeout: int = 60,
    minimum_interval_seconds: int = 10,
    listen_seconds: float | Callable[[], float] = 0.0,
    plan_runs: Callable[[Sequence[Any]], list[dg.RunRequest]] | None = None,
    default_status: dg.DefaultSensorStatus = dg.DefaultSensorStatus.RUNNING,
    description: str | None = None,
) -> dg.SensorDefinition:
    """A sensor that receives up to `max_messages` a tick from the queue `queue_name()` names.

    `parse(body)` returns the message's content or raises MalformedMessage (or ValueError);
    `handle(context, received)` returns a Handled, and is called once per batch received; what
    the Handleds leave `to_plan` over the tick goes to `plan_runs` once, at the end. The queue
    name and `listen_seconds` (a number or a function of none) are resolved at tick time, never
    when the code location loads. `listen_seconds` counts from when the daemon's loop came round
    for the tick; keep it under the loop's 5 s, so that the next tick starts as soon as this one
    ends.
    """

    @dg.sensor(
        name=name,
        description=description or f"Reads messages from an SQS queue and runs what they ask for ({name}).",
        asset_selection=asset_selection,
        minimum_interval_seconds=minimum_interval_seconds,
        default_status=default_status,
        required_resource_keys={"aws", *(required_resource_keys or set())},
    )
    def _sensor(context: dg.SensorEvaluationContext, **_resources: Any) -> dg.SensorResult | dg.SkipReason:
        # Dagster passes the required resources as keyword arguments; they are read from the context.
        listen = listen_seconds() if callable(listen_seconds) else listen_seconds
        window_end = time.monotonic() + max(0.0, listen - (time.time() - loop_started_at(context)))
        deadline = window_end
        sqs = context.resources.aws.client("sqs")
        queue = queue_name()
        queue_url = sqs.get_queue_url(QueueName=queue)["QueueUrl"]
        handled, counts = Handled(), {"received": 0, "deleted": 0, "malformed": 0}

        def receive(wait: int) -> list[Received[Any]]:
            """Up to what is left of max_messages; the first call waits up to `wait` s."""
            received: list[Received[Any]] = []
            while counts["received"] + len(received) < max_messages:
                batch = sqs.receive_message(
                    QueueUrl=queue_url,
                    MaxNumberOfMessages=min(10, max_messages - counts["received"] - len(received)),
                    WaitTimeSeconds=wait,
                    VisibilityTimeout=visibility_timeout,
                    MessageSystemAttributeNames=["ApproximateReceiveCount"],
                ).get("Messages", [])
                wait = 0
                for message in batch:
                    count = int(message.get("Attributes", {}).get("ApproximateReceiveCount", "1"))
                    try:
                        parsed = parse(message["Body"])
                    except ValueError as exc:
                        counts["malformed"] += 1
                        counts["received"] += 1
                        context.log.warning(
                            f"{name}: leaving message {message['MessageId']} on {queue} for the"
                            f" dead-letter queue (receive {count}): {exc}"
                        )
                        continue
                    received.append(
                        Received(
                            message["MessageId"], message["ReceiptHandle"], message["Body"], parsed, count
                        )
                    )
                if len(batch) < 10:
                    break
            return received

        def settle(received: Sequence[Received[Any]]) -> None:
            """Hand a batch to the handler and delete what it says is done."""
            counts["received"] += len(received)
            outcome = handle(context, received)
            entries = [
                {"Id": str(i), "ReceiptHandle": r.receipt_handle}
                for i, r in enumerate(received)
                if r.message_id in outcome.done
            ]
            for start in range(0, len(entries), 10):
                sqs.delete_message_batch(QueueUrl=queue_url, Entries=entries[start : start + 10])
            counts["deleted"] += len(entries)
            handled.merge(outcome)

        first = receive(0)
        if first:
            settle(first)
            if handled.asks:
                deadline = min(window_end, time.monotonic() + LINGER_SECONDS)
        while counts["received"] < max_messages:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            if left >= 1:
                batch = receive(min(20, math.floor(left)))
            else:
                time.sleep(min(left, SHORT_POLL_SECONDS))
                batch = receive(0)
            if batch:
                settle(batch)
                if handled.asks:  # runs are created once the tick returns: end it when the burst pauses
                    deadline = min(window_end, time.monotonic() + LINGER_SECONDS)

        if not counts["received"]:
            return dg.SkipReason(f"no messages on {queue}")
        waiting = counts["received"] - counts["malformed"] - counts["deleted"]
        if waiting:
            context.log.info(f"{name}: {waiting} messages wait for their runs; deleted once the runs exist")
        if not handled.asks:
            reason = "; ".join(handled.notes) or "nothing new to run"
            malformed = f", {counts['malformed']} malformed (left for the DLQ)" if counts["malformed"] else ""
            return dg.SkipReason(
                f"{counts['received']} messages, {counts['deleted']} deleted{malformed}: {reason}"
            )
        if handled.to_plan:
            if plan_runs is None:
                raise TypeError(f"{name}: the handler left work to plan, but the sensor has no plan_runs")
            handled.run_requests.extend(plan_runs(handled.to_plan))
        return dg.SensorResult(
            run_requests=handled.run_requests,
            dynamic_partitions_requests=handled.dynamic_partitions_requests,
            asset_events=handled.asset_events,
        )

    return _sensor
