"""`chalice deploy` for the prod stage, with the per-function policies made concrete.

The committed `.chalice/policy-prod-<function>.json` name the region and account through
Terraform's `data.aws_region.chalice` / `data.aws_caller_identity.chalice` (what `chalice package
--pkg-format terraform` declares), so that the packaged path needs no edits. `chalice deploy`
hands a policy file to IAM as it is, and IAM would not resolve those references: this script
copies the project into a temporary directory with the references replaced by the real region
and account (from the arguments, or AWS_DEFAULT_REGION and STS), runs `chalice deploy` there, and
brings Chalice's record of what it deployed (`.chalice/deployed/<stage>.json`) back, so the next
run updates the same resources.

    .venv/bin/python infra/deploy.py --stage prod [--region eu-west-1] [--account 123456789012]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
REFERENCES = {
    "${data.aws_region.chalice.name}": "region",
    "${data.aws_caller_identity.chalice.account_id}": "account",
}
_LEFT = re.compile(r"\$\{[^}]*\}")


def render_policy(text: str, region: str, account: str) -> str:
    """A policy file with the Terraform references replaced; refuses anything left unresolved or
    a region / account that is not one (they go into ARNs)."""
    if not re.fullmatch(r"[a-z]{2}(-[a-z]+)+-\d", region):
        raise ValueError(f"not an AWS region: {region!r}")
    if not re.fullmatch(r"\d{12}", account):
        raise ValueError(f"not an AWS account id (12 digits): {account!r}")
    values = {"region": region, "account": account}
    for reference, name in REFERENCES.items():
        text = text.replace(reference, values[name])
    left = _LEFT.findall(text)
    if left:
        raise ValueError(f"unresolved references in a policy: {sorted(set(left))}")
    json.loads(text)  # still a JSON document
    return text


def stage_policies(chalice_dir: Path, stage: str) -> list[Path]:
    config = json.loads((chalice_dir / "config.json").read_text())
    functions = config["stages"][stage].get("lambda_functions", {})
    names = {f["iam_policy_file"] for f in functions.values() if "iam_policy_file" in f}
    if "iam_policy_file" in config["stages"][stage]:
        names.add(config["stages"][stage]["iam_policy_file"])
    return [chalice_dir / name for name in sorted(names)]


def prepare(project: Path, stage: str, region: str, account: str) -> None:
    """A copy of what Chalice deploys (app.py, chalicelib/, requirements.txt, .chalice/) in
    `project`, its stage's policies made concrete."""
    for name in ("app.py", "requirements.txt"):
        shutil.copy2(ROOT / name, project / name)
    shutil.copytree(ROOT / "chalicelib", project / "chalicelib",
                    ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    shutil.copytree(ROOT / ".chalice", project / ".chalice")
    for policy in stage_policies(project / ".chalice", stage):
        policy.write_text(render_policy(policy.read_text(), region, account))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--stage", default="prod")
    parser.add_argument("--region", default=os.environ.get("AWS_DEFAULT_REGION", os.environ.get("AWS_REGION")))
    parser.add_argument("--account", help="default: the caller's account (STS)")
    args = parser.parse_args(argv)
    if not args.region:
        parser.error("give --region or set AWS_DEFAULT_REGION")
    account = args.account
    if account is None:
        import boto3

        account = boto3.client("sts", region_name=args.region).get_caller_identity()["Account"]
    with tempfile.TemporaryDirectory(prefix="csv-opener-deploy-") as tmp:
        project = Path(tmp)
        prepare(project, args.stage, args.region, account)
        chalice = Path(sys.executable).parent / "chalice"
        code = subprocess.call([str(chalice), "--project-dir", str(project), "deploy", "--stage", args.stage])
        deployed = project / ".chalice" / "deployed"
        if deployed.exists():
            (ROOT / ".chalice" / "deployed").mkdir(exist_ok=True)
            for record in deployed.glob("*.json"):
                shutil.copy2(record, ROOT / ".chalice" / "deployed" / record.name)
    return code


if __name__ == "__main__":
    sys.exit(main())
