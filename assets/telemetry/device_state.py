"""The latest reading of every device, kept in DynamoDB for applications that ask "where is device
X and what does it read now" without scanning the lake.

Each hour's processed readings update the table with a conditional write: an item changes only if
the reading is newer than the one it holds, so hours processed out of order (a late file re-runs
an old hour) never move a device back in time, and re-running an hour changes nothing.
"""

import contextlib
import io
from decimal import Decimal
from typing import Any

import dagster as dg

from assets.shared.automation import after_parent_updates
from assets.shared.conventions import domain_asset_args
from assets.telemetry.assets import PROCESSED
from assets.telemetry.hour_files import parquet_objects
from assets.telemetry.partitions import DOMAIN, HOURLY, PROCESSED_DATASET, hour_of
from resources import settings
from resources.aws import AwsClients
from resources.lake import LakeStorage, Tier

DEVICE_STATE = dg.AssetKey([DOMAIN, "device_latest_state"])
STATE_COLUMNS = ("temperature", "humidity", "pressure", "anomaly_flag", "anomaly_score", "is_late")


def ensure_table(dynamodb: Any, name: str) -> None:
    """Create the table on first use (on-demand capacity, key device_id)."""
    try:
        dynamodb.describe_table(TableName=name)
        return
    except dynamodb.exceptions.ResourceNotFoundException:
        pass
    with contextlib.suppress(dynamodb.exceptions.ResourceInUseException):  # a concurrent run made it
        dynamodb.create_table(
            TableName=name,
            KeySchema=[{"AttributeName": "device_id", "KeyType": "HASH"}],
            AttributeDefinitions=[{"AttributeName": "device_id", "AttributeType": "S"}],
            BillingMode="PAY_PER_REQUEST",
        )
    dynamodb.get_waiter("table_exists").wait(TableName=name)


def latest_per_device(rows: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Each device's reading with the greatest timestamp (ties: the later row)."""
    latest: dict[str, dict[str, Any]] = {}
    for row in rows:
        held = latest.get(row["device_id"])
        if held is None or row["timestamp"] >= held["timestamp"]:
            latest[row["device_id"]] = row
    return latest


def _attribute(value: Any) -> dict[str, Any]:
    if value is None:
        return {"NULL": True}
    if isinstance(value, bool):
        return {"BOOL": value}
    if isinstance(value, int | float):
        return {"N": str(Decimal(repr(value)))}
    return {"S": str(value)}


def item_update(row: dict[str, Any], hour_key: str) -> dict[str, Any]:
    """The UpdateItem arguments that set the device's state to row, if row is newer."""
    timestamp = row["timestamp"].strftime("%Y-%m-%dT%H:%M:%S.%fZ")  # fixed width: sorts as time
    values = {"timestamp": timestamp, "hour_partition": hour_key, **{c: row.get(c) for c in STATE_COLUMNS}}
    names = {f"#{i}": name for i, name in enumerate(values)}
    return {
        "Key": {"device_id": {"S": row["device_id"]}},
        "UpdateExpression": "SET " + ", ".join(f"#{i} = :{i}" for i in range(len(values))),
        "ConditionExpression": "attribute_not_exists(#0) OR #0 < :0",
        "ExpressionAttributeNames": names,
        "ExpressionAttributeValues": {f":{i}": _attribute(v) for i, v in enumerate(values.values())},
    }


@dg.asset(
    key=DEVICE_STATE,
    deps=[PROCESSED],
    partitions_def=HOURLY,
    description=(
        "Each device's latest processed reading in the DynamoDB table PLATFORM_TELEMETRY_DEVICE_TABLE"
        " (conditional writes: never replaced by an older reading)."
    ),
    automation_condition=after_parent_updates(),
    kinds={"dynamodb"},
    **domain_asset_args(DOMAIN),
)
def device_latest_state(
    context: dg.AssetExecutionContext, lake: LakeStorage, aws: AwsClients
) -> dg.MaterializeResult:
    import pyarrow as pa
    import pyarrow.parquet as pq

    hour = hour_of(context.partition_key)
    objects = parquet_objects(lake, Tier.PROCESSED, PROCESSED_DATASET, hour)
    columns = ["device_id", "timestamp", *STATE_COLUMNS]
    tables = [pq.read_table(io.BytesIO(lake.get_bytes(o.key)), columns=columns) for o in objects]
    rows = pa.concat_tables(tables).to_pylist() if tables else []
    latest = latest_per_device(rows)

    dynamodb, table = aws.client("dynamodb"), settings.telemetry_device_table()
    ensure_table(dynamodb, table)
    updated = kept_newer = 0
    for row in latest.values():
        try:
            dynamodb.update_item(TableName=table, **item_update(row, context.partition_key))
            updated += 1
        except dynamodb.exceptions.ConditionalCheckFailedException:
            kept_newer += 1  # the table already holds a newer reading of this device
    return dg.MaterializeResult(
        metadata={
            "devices": len(latest),
            "updated": updated,
            "kept_newer": kept_newer,
            "table": table,
        }
    )
