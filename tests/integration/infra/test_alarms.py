"""The alarms, their topic and the dashboard of infra/resources.yaml, as `make test` provisioned
them in LocalStack, read back through its CloudWatch and SNS APIs."""

from __future__ import annotations

import json

import boto3
import pytest

from infra.provision import LOCAL_PARAMETERS

ALARMS = {
    "csv-opener-dead-letter-queue-not-empty", "csv-opener-ingest-dead-letter-queue-not-empty",
    "csv-opener-chunk-queue-oldest-message",
    "csv-opener-handler-errors-or-throttles", "csv-opener-llm-429-share", "csv-opener-daily-cost",
}


def _client(service: str, settings):
    return boto3.client(service, endpoint_url=settings.aws_endpoint_url, region_name=settings.aws_region,
                        aws_access_key_id="test", aws_secret_access_key="test")


@pytest.fixture
def alarms(settings) -> dict[str, dict]:
    found = _client("cloudwatch", settings).describe_alarms(AlarmNamePrefix="csv-opener-")["MetricAlarms"]
    return {alarm["AlarmName"]: alarm for alarm in found}


@pytest.fixture
def topic_arn(settings) -> str:
    topics = _client("sns", settings).list_topics()["Topics"]
    [arn] = [t["TopicArn"] for t in topics if t["TopicArn"].endswith(":csv-opener-alarms")]
    return arn


def test_every_alarm_of_the_runbook_exists_and_tells_the_one_topic(alarms, topic_arn):
    assert set(alarms) == ALARMS
    for name, alarm in alarms.items():
        assert alarm["AlarmActions"] == [topic_arn], name
        assert "docs/operations.md#" in alarm["AlarmDescription"], name


def test_the_queue_alarms_watch_the_provisioned_queues(alarms, settings):
    dlq = alarms["csv-opener-dead-letter-queue-not-empty"]
    assert (dlq["Namespace"], dlq["MetricName"], dlq["Threshold"], dlq["ComparisonOperator"]) == (
        "AWS/SQS", "ApproximateNumberOfMessagesVisible", 0.0, "GreaterThanThreshold")
    assert dlq["Dimensions"] == [{"Name": "QueueName", "Value": settings.dlq_url.rsplit("/", 1)[1]}]
    ingest = alarms["csv-opener-ingest-dead-letter-queue-not-empty"]
    assert (ingest["MetricName"], ingest["Threshold"], ingest["ComparisonOperator"]) == (
        "ApproximateNumberOfMessagesVisible", 0.0, "GreaterThanThreshold")
    assert ingest["Dimensions"] == [{"Name": "QueueName",
                                     "Value": settings.ingest_queue_url.rsplit("/", 1)[1] + "-dlq"}]
    age = alarms["csv-opener-chunk-queue-oldest-message"]
    assert (age["MetricName"], age["Threshold"]) == ("ApproximateAgeOfOldestMessage", 900.0)
    assert age["Dimensions"] == [{"Name": "QueueName", "Value": settings.chunk_queue_url.rsplit("/", 1)[1]}]


def test_the_429_share_is_metric_math_on_the_emf_metrics(alarms):
    share = alarms["csv-opener-llm-429-share"]
    queries = {q["Id"]: q for q in share["Metrics"]}
    assert queries["share"]["Expression"] == "IF(calls > 0, 100 * limited / calls, 0)" and share["Threshold"] == 5.0
    for query_id, metric in (("calls", "LlmCalls"), ("limited", "LlmCalls429")):
        stat = queries[query_id]["MetricStat"]
        assert (stat["Metric"]["Namespace"], stat["Metric"]["MetricName"], stat["Stat"]) == (
            "CSVOpener", metric, "Sum")
        assert stat["Metric"]["Dimensions"] == [{"Name": "service", "Value": "csv-opener"}]
    errors = alarms["csv-opener-handler-errors-or-throttles"]
    watched = {(q["MetricStat"]["Metric"]["MetricName"], q["MetricStat"]["Metric"]["Dimensions"][0]["Value"])
               for q in errors["Metrics"] if "MetricStat" in q}
    functions = {"api_handler", "process_chunk", "start_dropped_csv", "requeue_stalled"}
    assert watched == {(m, f"csv-opener-prod-{f}") for m in ("Errors", "Throttles") for f in functions}


def test_the_daily_cost_alarm_uses_the_parameter(alarms):
    cost = alarms["csv-opener-daily-cost"]
    assert (cost["Namespace"], cost["MetricName"], cost["Statistic"], cost["Period"], cost["Threshold"]) == (
        "CSVOpener", "CostUsd", "Sum", 86400, 50.0)


def test_the_topic_has_the_email_subscription(settings, topic_arn):
    subscriptions = _client("sns", settings).list_subscriptions_by_topic(TopicArn=topic_arn)["Subscriptions"]
    assert [(s["Protocol"], s["Endpoint"]) for s in subscriptions] == [("email", LOCAL_PARAMETERS["AlarmEmail"])]


def test_the_dashboard_shows_what_the_runbook_reads(settings):
    raw = _client("cloudwatch", settings).get_dashboard(DashboardName="csv-opener")["DashboardBody"]
    assert "${" not in raw  # every variable of the template's !Sub filled in
    body = json.loads(raw)
    titles = [w["properties"]["title"] for w in body["widgets"]]
    for wanted in ("Throughput", "429 share", "latency", "oldest message", "Dead-letter", "Cost per hour",
                   "Top accounts by cost"):
        assert any(wanted in title for title in titles), wanted
    [logs] = [w for w in body["widgets"] if w["type"] == "log"]
    assert "stats sum(CostUsd)" in logs["properties"]["query"] and "by account_id" in logs["properties"]["query"]
    assert "SOURCE '/aws/lambda/csv-opener-prod-process_chunk'" in logs["properties"]["query"]
    queue_name = settings.chunk_queue_url.rsplit("/", 1)[1]
    assert any(queue_name in json.dumps(w["properties"].get("metrics")) for w in body["widgets"])
