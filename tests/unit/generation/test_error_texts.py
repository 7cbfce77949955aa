"""What a tenant reads when a call fails names the kind of failure, never a library's text: that
names the provider's host and address, our queue URLs, sometimes a credential (issue 19 item 14)."""

from __future__ import annotations

import httpx2
import openai

from chalicelib.generation.client import describe_error

HOST = "llm-gateway.internal.corp:8443"


def test_a_connection_failure_names_its_kind_not_the_providers_address():
    request = httpx2.Request("POST", f"https://{HOST}/v1/chat/completions")
    error = openai.APIConnectionError(request=request)
    error.__cause__ = httpx2.ConnectError(f"[Errno 111] Connection refused to {HOST} (10.1.2.3)")
    text = describe_error(error)
    assert text == "Could not connect to the model API (ConnectError)"


def test_an_unexpected_exception_is_described_by_its_type():
    text = describe_error(RuntimeError(f"connection pool to {HOST} with password s3cret exhausted"))
    assert text == "The model API call failed (RuntimeError)"
