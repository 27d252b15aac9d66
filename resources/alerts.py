"""Alerts to the people who run the platform: an SNS topic (moto locally, SNS in production)."""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from resources import settings

if TYPE_CHECKING:
    from resources.aws import AwsClients

log = logging.getLogger(__name__)
SUBJECT_CHARS = 100  # SNS refuses longer subjects


def topic_arn(aws: AwsClients) -> str:
    """The alert topic's ARN; CreateTopic is idempotent and returns the existing topic's ARN."""
    return str(aws.client("sns").create_topic(Name=settings.alerts_topic_name())["TopicArn"])


def publish_alert(aws: AwsClients, subject: str, message: str) -> bool:
    """Publish one alert; False (and a log line) when SNS cannot be reached, so the load's own
    outcome is never hidden behind a failed alert."""
    try:
        aws.client("sns").publish(TopicArn=topic_arn(aws), Subject=subject[:SUBJECT_CHARS], Message=message)
        return True
    except Exception:
        log.exception("could not publish alert %r", subject)
        return False
