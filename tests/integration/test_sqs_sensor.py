"""The generic SQS sensor's listening window on the moto server: counted from the tick's start as
the daemon recorded it (so a tick ends before the daemon's next loop), each batch handled as it
arrives, and what the handler does not finish left on the queue."""

from __future__ import annotations

import time
import uuid
from collections.abc import Sequence
from concurrent.futures import ThreadPoolExecutor

import dagster as dg
from dagster._core.scheduler.instigation import InstigatorType, TickData, TickStatus

from assets.shared.sqs_sensor import Handled, Received, loop_started_at, sqs_sensor
from resources.aws import AwsClients
from services.aws_bootstrap import ensure_queue


def _tick_record(instance: dg.DagsterInstance, started: float) -> int:
    tick = instance.create_tick(
        TickData(
            instigator_origin_id="origin",
            instigator_name="listening",
            instigator_type=InstigatorType.SENSOR,
            status=TickStatus.STARTED,
            timestamp=started,
            selector_id="selector",
        )
    )
    return tick.tick_id


def _context(
    instance: dg.DagsterInstance, aws: AwsClients, log_key: list[str] | None
) -> dg.SensorEvaluationContext:
    return dg.SensorEvaluationContext(
        instance_ref=None,
        last_tick_completion_time=None,
        last_run_key=None,
        cursor=None,
        repository_name="repo",
        instance=instance,
        resources={"aws": aws},
        log_key=log_key,
    )


def test_the_loop_started_at_the_tick_record_less_its_delay_behind_recent_ticks():
    with dg.instance_for_test() as instance:
        now = time.time()
        # Earlier ticks of the same sensor, made 0.10 s and 0.30 s after their loops came round (the
        # loop every 5 s), and this tick made 0.85 s after its loop: 0.75 s later than the earliest.
        _tick_record(instance, now - 10.0 + 0.10)
        _tick_record(instance, now - 5.0 + 0.30)
        current = _tick_record(instance, now + 0.85)
        with _context(instance, AwsClients(), ["repo", "listening", str(current)]) as context:
            assert abs(loop_started_at(context) - (now + 0.10)) < 1e-6

    with dg.instance_for_test() as instance:
        alone = _tick_record(instance, now - 3.25)  # no earlier tick: the record itself
        with _context(instance, AwsClients(), ["repo", "listening", str(alone)]) as context:
            assert loop_started_at(context) == now - 3.25
        before = time.time()
        with _context(instance, AwsClients(), None) as context:  # under test: no tick record
            assert before <= loop_started_at(context) <= time.time()
        with _context(instance, AwsClients(), ["repo", "listening", "999999"]) as context:  # no such tick
            assert before <= loop_started_at(context) <= time.time()


def test_a_listening_tick_handles_each_batch_as_it_arrives_within_the_daemon_tick_window(local_aws):
    queue = f"listen-{uuid.uuid4().hex[:8]}"
    url = ensure_queue(local_aws, queue)
    seen: list[tuple[float, list[str]]] = []

    def handle(context: dg.SensorEvaluationContext, received: Sequence[Received[str]]) -> Handled:
        seen.append((time.monotonic(), [r.body for r in received]))
        return Handled(done={r.message_id for r in received if r.body != "keep"})

    sensor = sqs_sensor("listening", queue_name=lambda: queue, parse=str, handle=handle, listen_seconds=3.0)
    sqs = local_aws.client("sqs")
    with dg.instance_for_test() as instance:
        # The daemon started the tick 2 s before the sensor ran: 1 s of its 3 s window is left.
        tick_id = _tick_record(instance, time.time() - 2.0)
        sqs.send_message(QueueUrl=url, MessageBody="early")

        def late() -> float:
            time.sleep(0.4)
            sqs.send_message(QueueUrl=url, MessageBody="keep")
            return time.monotonic()

        with (
            ThreadPoolExecutor(1) as pool,
            _context(instance, local_aws, ["repo", "listening", str(tick_id)]) as ctx,
        ):
            sent_late = pool.submit(late)
            started = time.monotonic()
            result = sensor(ctx)
            ended = time.monotonic()
            late_at = sent_late.result()
        assert isinstance(result, dg.SkipReason)
        assert "2 messages, 1 deleted" in (result.skip_message or "")
        assert [bodies for _, bodies in seen] == [["early"], ["keep"]]  # one handler call per batch
        assert late_at <= seen[1][0] <= ended  # handled when it arrived, within the tick
        assert ended - started < 3.0  # the window is counted from the tick record, not from here
        # What the handler did not finish is still on the queue (in flight until its visibility ends).
        attributes = sqs.get_queue_attributes(
            QueueUrl=url, AttributeNames=["ApproximateNumberOfMessagesNotVisible"]
        )
        assert attributes["Attributes"]["ApproximateNumberOfMessagesNotVisible"] == "1"


def test_work_left_to_plan_by_several_batches_of_a_tick_is_planned_once(local_aws):
    queue = f"plan-{uuid.uuid4().hex[:8]}"
    url = ensure_queue(local_aws, queue)
    sqs = local_aws.client("sqs")
    batches: list[list[str]] = []
    planned: list[list[str]] = []

    def handle(context: dg.SensorEvaluationContext, received: Sequence[Received[str]]) -> Handled:
        batches.append([r.body for r in received])
        following = {"a": "b", "b": "c", "c": "d"}.get(received[0].body)
        if following:  # more of the burst lands while a batch is handled, the last ones slowly
            time.sleep(0.0 if following == "b" else 0.35)
            sqs.send_message(QueueUrl=url, MessageBody=following)
        return Handled(done={r.message_id for r in received}, to_plan=[r.body for r in received])

    def plan(items: Sequence[str]) -> list[dg.RunRequest]:
        planned.append(list(items))
        return [dg.RunRequest(run_key="+".join(items))]

    sensor = sqs_sensor(
        "planning", queue_name=lambda: queue, parse=str, handle=handle, listen_seconds=10.0, plan_runs=plan
    )
    sqs.send_message(QueueUrl=url, MessageBody="a")
    with dg.instance_for_test() as instance, _context(instance, local_aws, None) as context:
        started = time.monotonic()
        result = sensor(context)
        took = time.monotonic() - started
    # The burst kept the tick open past half a second after the first batch that asked for runs
    # (each batch moves the end on), and everything it left to plan was planned once, at the end.
    assert batches == [["a"], ["b"], ["c"], ["d"]]
    assert planned == [["a", "b", "c", "d"]]
    assert isinstance(result, dg.SensorResult) and [r.run_key for r in result.run_requests or []] == [
        "a+b+c+d"
    ]
    assert took < 10.0  # work to plan ended the tick before its window
