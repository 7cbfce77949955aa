"""Provision the stateful resources from `infra/resources.yaml` through CloudFormation.

The same template serves LocalStack and AWS, so local and cloud cannot drift. Idempotent:
an unchanged template is a no-op, a changed one is an update.

    python infra/provision.py --endpoint http://127.0.0.1:4566 --local    # LocalStack
    python infra/provision.py --stack csv-opener-resources                # AWS (your credentials)
"""

from __future__ import annotations

import argparse
import re
import time
from pathlib import Path

import boto3
import yaml
from botocore.exceptions import ClientError

TEMPLATE = Path(__file__).resolve().parent / "resources.yaml"
STACK = "csv-opener-resources"
# A local stack's bucket takes presigned PUTs and GETs from any page (a test browser's origin
# changes per run); AWS has no default: --param BrowserOrigins=https://... (README "Deploy to AWS").
# Its alarm topic gets a (never confirmed) email subscription, so the wiring is there to read back.
LOCAL_PARAMETERS = {"DropsQueueName": "csv-opener-drops", "BrowserOrigins": "*",
                    "AlarmEmail": "oncall@example.com"}


def _client(endpoint: str | None, region: str, service: str = "cloudformation"):
    kwargs = {"region_name": region}
    if endpoint:
        kwargs.update(endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client(service, **kwargs)


class _TemplateLoader(yaml.SafeLoader):
    """Reads CloudFormation's short tags (!Ref, !Sub, ...) as {"Tag": value}."""


_TemplateLoader.add_multi_constructor("!", lambda loader, tag, node: {tag: (
    loader.construct_scalar(node) if isinstance(node, yaml.ScalarNode) else
    loader.construct_sequence(node, deep=True) if isinstance(node, yaml.SequenceNode) else
    loader.construct_mapping(node, deep=True))})


def put_local_dashboard(endpoint: str, region: str, parameters: dict[str, str], outputs: dict[str, str]) -> str:
    """LocalStack's CloudFormation has no provider for AWS::CloudWatch::Dashboard (it skips the
    resource), while its CloudWatch API keeps dashboards: put the template's dashboard through
    the API, its `!Sub` variables filled in from the parameters and the stack's outputs."""
    template = yaml.load(TEMPLATE.read_text(), Loader=_TemplateLoader)  # noqa: S506 (SafeLoader subclass)
    resource = template["Resources"]["OperationsDashboard"]["Properties"]
    body, _ = resource["DashboardBody"]["Sub"]
    values = {name: str(spec.get("Default", "")) for name, spec in template["Parameters"].items()}
    values.update(parameters)
    values.update({"AWS::Region": region,
                   "DeadLetterQueueName": outputs["ChunkDeadLetterQueueUrl"].rsplit("/", 1)[1]})
    body = re.sub(r"\$\{([A-Za-z:]+)\}", lambda m: values[m.group(1)], body)
    name = resource["DashboardName"]
    _client(endpoint, region, "cloudwatch").put_dashboard(DashboardName=name, DashboardBody=body)
    return name


def _wait(cfn, stack: str, timeout_s: float = 180) -> dict:
    deadline = time.monotonic() + timeout_s
    while True:
        desc = cfn.describe_stacks(StackName=stack)["Stacks"][0]
        status = desc["StackStatus"]
        if not status.endswith("_IN_PROGRESS"):
            if status not in {"CREATE_COMPLETE", "UPDATE_COMPLETE"}:
                events = cfn.describe_stack_events(StackName=stack)["StackEvents"][:10]
                reasons = [f"{e['LogicalResourceId']}: {e.get('ResourceStatusReason')}"
                           for e in events if "FAILED" in e["ResourceStatus"]]
                raise RuntimeError(f"stack {stack} is {status}: {reasons}")
            return desc
        if time.monotonic() > deadline:
            raise TimeoutError(f"stack {stack} still {status} after {timeout_s:.0f}s")
        time.sleep(0.2)


def provision(endpoint: str | None, region: str = "us-east-1", stack: str = STACK,
              parameters: dict[str, str] | None = None) -> dict[str, str]:
    """Create or update the stack; returns its outputs."""
    cfn = _client(endpoint, region)
    params = [{"ParameterKey": k, "ParameterValue": str(v)} for k, v in (parameters or {}).items()]
    body = TEMPLATE.read_text()
    try:
        cfn.describe_stacks(StackName=stack)
        exists = True
    except ClientError as exc:
        if "does not exist" not in str(exc):
            raise
        exists = False
    if not exists:
        cfn.create_stack(StackName=stack, TemplateBody=body, Parameters=params)
    else:
        try:
            cfn.update_stack(StackName=stack, TemplateBody=body, Parameters=params)
        except ClientError as exc:
            if "No updates are to be performed" not in str(exc):
                raise
    desc = _wait(cfn, stack)
    outputs = {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])}
    if endpoint:
        outputs["DashboardName"] = put_local_dashboard(endpoint, region, parameters or {}, outputs)
    return outputs


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--endpoint", help="LocalStack URL; omit for AWS")
    parser.add_argument("--region", default="us-east-1")
    parser.add_argument("--stack", default=STACK)
    parser.add_argument("--local", action="store_true", help="add the S3-notification queue for the event runner")
    parser.add_argument("--param", action="append", default=[], metavar="KEY=VALUE")
    args = parser.parse_args()
    params = dict(LOCAL_PARAMETERS) if args.local else {}
    params.update(p.split("=", 1) for p in args.param)
    for key, value in provision(args.endpoint, args.region, args.stack, params).items():
        print(f"{key}={value}")


if __name__ == "__main__":
    main()
