"""Create the AWS objects the platform expects (idempotent): queues with a dead-letter queue,
and the lake bucket with S3 event notifications to the landing queue and its lifecycle rules."""

from __future__ import annotations

import json

from resources.aws import AwsClients

MAX_RECEIVES_BEFORE_DLQ = 5


def ensure_queue(aws: AwsClients, name: str) -> str:
    """A queue and its '<name>-dlq' dead-letter queue; returns the queue URL."""
    sqs = aws.client("sqs")
    dlq_url = sqs.create_queue(QueueName=f"{name}-dlq")["QueueUrl"]
    dlq_arn = sqs.get_queue_attributes(QueueUrl=dlq_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    redrive = json.dumps({"deadLetterTargetArn": dlq_arn, "maxReceiveCount": str(MAX_RECEIVES_BEFORE_DLQ)})
    url = sqs.create_queue(QueueName=name)["QueueUrl"]
    sqs.set_queue_attributes(QueueUrl=url, Attributes={"RedrivePolicy": redrive})
    return url


def ensure_bucket_notifications(aws: AwsClients, bucket: str, queue_name: str, prefix: str = "") -> None:
    """The bucket, sending ObjectCreated events under `prefix` to the queue."""
    s3 = aws.client("s3")
    sqs = aws.client("sqs")
    existing = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    if bucket not in existing:
        s3.create_bucket(Bucket=bucket)
    queue_url = ensure_queue(aws, queue_name)
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])["Attributes"][
        "QueueArn"
    ]
    policy = {
        "Version": "2012-10-17",
        "Statement": [
            {
                "Effect": "Allow",
                "Principal": {"Service": "s3.amazonaws.com"},
                "Action": "sqs:SendMessage",
                "Resource": queue_arn,
                "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
            }
        ],
    }
    sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": json.dumps(policy)})
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "QueueConfigurations": [
                {
                    "Id": f"{queue_name}-created",
                    "QueueArn": queue_arn,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}},
                }
            ]
        },
    )


def queue_arn(aws: AwsClients, queue_url: str) -> str:
    attrs = aws.client("sqs").get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn"])
    return str(attrs["Attributes"]["QueueArn"])


def ensure_topic(aws: AwsClients, name: str) -> str:
    """An SNS topic (CreateTopic is idempotent); returns its ARN."""
    return str(aws.client("sns").create_topic(Name=name)["TopicArn"])


def ensure_bucket_fanout(aws: AwsClients, bucket: str, topic_name: str, queue_names: list[str]) -> str:
    """The bucket's ObjectCreated events go to one SNS topic, and every queue subscribes to it.

    S3 refuses two notification configurations whose prefixes overlap (landing/ and
    landing/cdc/), so each consumer gets every event through the topic and keeps its own.
    """
    s3, sqs, sns = aws.client("s3"), aws.client("sqs"), aws.client("sns")
    if bucket not in {b["Name"] for b in s3.list_buckets().get("Buckets", [])}:
        s3.create_bucket(Bucket=bucket)
    topic = ensure_topic(aws, topic_name)
    sns.set_topic_attributes(
        TopicArn=topic,
        AttributeName="Policy",
        AttributeValue=json.dumps(
            {
                "Version": "2012-10-17",
                "Statement": [
                    {
                        "Effect": "Allow",
                        "Principal": {"Service": "s3.amazonaws.com"},
                        "Action": "sns:Publish",
                        "Resource": topic,
                        "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
                    }
                ],
            }
        ),
    )
    for name in queue_names:
        url = ensure_queue(aws, name)
        arn = queue_arn(aws, url)
        policy = {
            "Version": "2012-10-17",
            "Statement": [
                {
                    "Effect": "Allow",
                    "Principal": {"Service": "sns.amazonaws.com"},
                    "Action": "sqs:SendMessage",
                    "Resource": arn,
                    "Condition": {"ArnEquals": {"aws:SourceArn": topic}},
                }
            ],
        }
        sqs.set_queue_attributes(QueueUrl=url, Attributes={"Policy": json.dumps(policy)})
        sns.subscribe(TopicArn=topic, Protocol="sqs", Endpoint=arn)  # idempotent for the same endpoint
    # The telemetry tiers' lifecycle (Standard-IA, Glacier, expiry), merged with the bucket's other rules.
    from assets.telemetry.lifecycle import apply_lifecycle  # lazy: the bootstrap loads no assets otherwise
    from resources.lake import S3Lake

    apply_lifecycle(S3Lake(aws=aws, bucket=bucket))
    s3.put_bucket_notification_configuration(
        Bucket=bucket,
        NotificationConfiguration={
            "TopicConfigurations": [
                {
                    "Id": f"{topic_name}-created",
                    "TopicArn": topic,
                    "Events": ["s3:ObjectCreated:*"],
                    "Filter": {"Key": {"FilterRules": [{"Name": "prefix", "Value": "landing/"}]}},
                }
            ]
        },
    )
    return topic
