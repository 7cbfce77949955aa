import json

import pytest

from chalicelib import logs
from chalicelib.settings import Settings, parse_delay_ms


def test_defaults_work_for_the_local_stack():
    s = Settings.from_env({})
    assert s.openai_dummy_mode is True  # no key -> dummy
    assert s.upload_bucket == "csv-opener-uploads"
    assert s.aws_endpoint_url == "http://127.0.0.1:4566"
    assert (s.chunk_size, s.chunk_concurrency, s.max_retries, s.openai_rpm, s.openai_tpm) == (500, 16, 3, 0, 0)


def test_a_key_turns_dummy_mode_off_unless_forced():
    assert Settings.from_env({"OPENAI_API_KEY": "sk-x"}).openai_dummy_mode is False
    assert Settings.from_env({"OPENAI_API_KEY": "sk-x", "OPENAI_DUMMY_MODE": "true"}).openai_dummy_mode is True


def test_lambda_has_no_localstack_endpoint_by_default():
    assert Settings.from_env({"AWS_LAMBDA_FUNCTION_NAME": "f"}).aws_endpoint_url is None


@pytest.mark.parametrize("text, expected", [("2000-3000", (2000, 3000)), ("150", (150, 150)), ("0", (0, 0))])
def test_dummy_delay_accepts_a_range_or_a_number(text, expected):
    assert parse_delay_ms(text) == expected


@pytest.mark.parametrize("text", ["fast", "3000-2000", "-5"])
def test_dummy_delay_rejects_nonsense(text):
    with pytest.raises(ValueError):
        parse_delay_ms(text)


def test_log_lines_are_json_with_job_and_chunk(capsys):
    logs.configure("INFO")
    with logs.log_context(job_id="j1", chunk=3):
        logs.get_logger("t").info("saved %d results", 5, extra={"batch": 5})
    line = json.loads(capsys.readouterr().out.strip().splitlines()[-1])
    assert line["message"] == "saved 5 results"
    assert (line["level"], line["job_id"], line["chunk"], line["batch"]) == ("info", "j1", 3, 5)


def test_secrets_can_come_from_ssm_parameters():
    from chalicelib.settings import resolve_secrets

    asked = []

    def fetch(names):
        asked.append(names)
        return {"/csv-opener/db": "postgresql://u:p@proxy/csv_opener", "/csv-opener/key": "sk-live"}

    env = {"DATABASE_URL": "ssm:/csv-opener/db", "OPENAI_API_KEY": "ssm:/csv-opener/key", "REDIS_URL": "redis://r"}
    resolved = resolve_secrets(env, fetch)
    assert resolved["DATABASE_URL"] == "postgresql://u:p@proxy/csv_opener"
    assert resolved["OPENAI_API_KEY"] == "sk-live" and resolved["REDIS_URL"] == "redis://r"
    assert asked == [["/csv-opener/db", "/csv-opener/key"]]  # one call for all of them
    assert resolve_secrets({"DATABASE_URL": "postgresql://x"}, fetch) == {"DATABASE_URL": "postgresql://x"}
    with pytest.raises(RuntimeError, match="/csv-opener/missing"):
        resolve_secrets({"REDIS_URL": "ssm:/csv-opener/missing"}, fetch)


def test_no_log_line_holds_an_api_key_only_its_public_prefix(capsys):
    logs.configure("INFO")
    ours = "cso_0a1b2c3d_" + "Zz9-_" * 8 + "abc"
    logs.get_logger("test").warning(f"bad key {ours}",
                                    extra={"header": f"Bearer {ours}", "provider": "sk-proj-AbCd1234"})
    line = capsys.readouterr().out
    assert "cso_0a1b2c3d_[redacted]" in line and "sk-[redacted]" in line
    assert ours[13:] not in line and "AbCd1234" not in line


def test_provider_error_text_stored_on_a_url_carries_no_key_fragment():
    from chalicelib.generation.answers import GenerationFailed

    failed = GenerationFailed("HTTP 401 from the model API: Incorrect API key provided: sk-proj-********abcd. "
                              "You can find your API key at https://platform.openai.com/account/api-keys.", 1)
    assert "abcd" not in failed.message and "sk-[redacted]" in failed.message
    assert "Incorrect API key provided" in failed.message
