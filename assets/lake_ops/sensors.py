"""Sensors that keep landing_arrivals current as objects land."""

from __future__ import annotations

import dagster as dg

from assets.lake_ops.assets import OWN_ARRIVALS, landing_arrivals
from assets.shared.routes import LakeRoute, day_of
from assets.shared.sensors import lake_objects_sensor, s3_event_sensor
from resources import settings
from resources.lake import Tier

# Every domain's landing objects count towards that day's arrivals. CDC change files (several a
# second) are loaded by the CDC sensors and counted when another file triggers a recount.
_ROUTE = LakeRoute(
    asset=landing_arrivals.key, tier=Tier.LANDING, partition_key=day_of, exclude_domains=OWN_ARRIVALS
)

landing_listing_sensor = lake_objects_sensor(
    "lake_ops_landing_listing",
    [_ROUTE],
    description="Lists the landing tier for new objects (local directory or S3).",
)

landing_events_sensor = s3_event_sensor(
    "lake_ops_landing_events",
    [_ROUTE],
    queue_name=settings.landing_queue_name,
    # Off by default: the listing sensor covers both lake modes. Both may run at once
    # (they claim each object in the file ledger), e.g. with the lake in S3.
    default_status=dg.DefaultSensorStatus.STOPPED,
    description="Reads S3 event notifications for the landing tier from SQS.",
)
