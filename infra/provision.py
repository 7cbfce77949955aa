"""Provision the stateful resources from `infra/resources.yaml` through CloudFormation.

The same template serves LocalStack and AWS, so local and cloud cannot drift. Idempotent:
an unchanged template is a no-op, a changed one is an update.

    python infra/provision.py --endpoint http://127.0.0.1:4566 --local    # LocalStack
    python infra/provision.py --stack csv-opener-resources                # AWS (your credentials)
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import boto3
from botocore.exceptions import ClientError

TEMPLATE = Path(__file__).resolve().parent / "resources.yaml"
STACK = "csv-opener-resources"
# A local stack's bucket takes presigned PUTs and GETs from any page (a test browser's origin
# changes per run); AWS has no default: --param BrowserOrigins=https://... (README "Deploy to AWS").
LOCAL_PARAMETERS = {"DropsQueueName": "csv-opener-drops", "BrowserOrigins": "*"}


def _client(endpoint: str | None, region: str):
    kwargs = {"region_name": region}
    if endpoint:
        kwargs.update(endpoint_url=endpoint, aws_access_key_id="test", aws_secret_access_key="test")
    return boto3.client("cloudformation", **kwargs)


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
        time.sleep(0.5)


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
    return {o["OutputKey"]: o["OutputValue"] for o in desc.get("Outputs", [])}


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
