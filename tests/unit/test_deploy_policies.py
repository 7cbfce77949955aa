"""`chalice deploy` of the prod stage gets concrete policies (infra/deploy.py): the committed ones
name region and account as Terraform references, which IAM would not resolve."""

from __future__ import annotations

import json

import pytest

from infra.deploy import prepare, render_policy, stage_policies
from tests.support.util import ROOT


def test_every_prod_policy_renders_to_concrete_arns(tmp_path):
    prepare(tmp_path, "prod", "eu-west-1", "123456789012")
    policies = stage_policies(tmp_path / ".chalice", "prod")
    assert len(policies) == 5  # one per function
    for policy in policies:
        text = policy.read_text()
        assert "${" not in text and "data.aws_" not in text
        arns = [r for s in json.loads(text)["Statement"]
                for r in ([s["Resource"]] if isinstance(s["Resource"], str) else s["Resource"])]
        regional = [a for a in arns if a.startswith(("arn:aws:sqs:", "arn:aws:ssm:", "arn:aws:logs:"))]
        assert regional and all(":eu-west-1:123456789012:" in a for a in regional), regional
    # the committed files are untouched: the packaged (Terraform) path still resolves them itself
    committed = (ROOT / ".chalice" / policies[0].name).read_text()
    assert "${data.aws_region.chalice.name}" in committed


@pytest.mark.parametrize("region,account", [("*", "123456789012"), ("eu-west-1", "*"), ("eu-west-1", "1234"),
                                            ("eu-west-1; drop", "123456789012")])
def test_a_region_or_account_that_is_not_one_is_refused(region, account):
    with pytest.raises(ValueError):
        render_policy('{"Resource": "arn:aws:sqs:${data.aws_region.chalice.name}:x"}', region, account)


def test_an_unknown_reference_is_refused():
    with pytest.raises(ValueError, match="unresolved"):
        render_policy('{"Resource": "${var.other}"}', "eu-west-1", "123456789012")
