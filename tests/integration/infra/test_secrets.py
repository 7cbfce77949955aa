"""Secrets given as `ssm:` references are read from SSM Parameter Store (LocalStack here)."""

import os

import boto3

from chalicelib.adapters import db
from chalicelib.settings import get_secret_settings, get_settings


def test_ssm_references_resolve_to_the_parameters(env, unique):
    ssm = boto3.client("ssm", endpoint_url=os.environ["AWS_ENDPOINT_URL"], region_name="us-east-1",
                       aws_access_key_id="test", aws_secret_access_key="test")
    real_url = os.environ["DATABASE_URL"]
    ssm.put_parameter(Name=f"/csv-opener/{unique}/DATABASE_URL", Value=real_url, Type="SecureString")
    ssm.put_parameter(Name=f"/csv-opener/{unique}/OPENAI_API_KEY", Value="sk-from-ssm", Type="SecureString")
    env(DATABASE_URL=f"ssm:/csv-opener/{unique}/DATABASE_URL",
        OPENAI_API_KEY=f"ssm:/csv-opener/{unique}/OPENAI_API_KEY", OPENAI_DUMMY_MODE="")
    assert get_settings().database_url.startswith("ssm:")  # importing the app needs no AWS
    settings = get_secret_settings()
    assert settings.database_url == real_url and settings.openai_api_key == "sk-from-ssm"
    assert settings.openai_dummy_mode is False  # a key arrived
    conn = db.connect(settings.database_url)
    assert conn.execute("SELECT 1 AS one").fetchone()["one"] == 1
    conn.close()
