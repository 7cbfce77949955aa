"""Review before sending (issue 21) end to end over real HTTP: a job completed by the runner's
workers, its rejected and then its flagged rows regenerated with feedback (through the queue,
the limiter and the fake model again), a person's edit that the regenerations leave alone,
review marks, the job completing again with one more signed webhook saying `regenerated`, and
the approved-only download."""

from __future__ import annotations

import csv
import io
import json
import uuid

import pytest

from tests.support.e2e import assert_finished_cleanly, make_csv, url_rows, wait_for
from tests.support.webhook_receiver import Receiver


@pytest.mark.runner(OUTBOUND_ALLOW_NETWORKS="127.0.0.1/32")
def test_regenerate_flagged_rows_with_feedback_edit_review_and_download_approved(fresh, capsys):
    stack, api = fresh, fresh.api
    assert api.call("POST", "/api/account/webhook-secret", {}).status == 201
    csv_file = make_csv(f"rev{uuid.uuid4().hex[:6]}", 20)
    with Receiver() as receiver:
        job_id = api.upload(csv_file.name, csv_file.data)["job"]["id"]
        api.process(job_id, callback_url=receiver.url, page_context=False)
        stack.wait_job(job_id, urls=csv_file.valid)
        wait_for(lambda: len(receiver.requests) == 1, 20, what="first webhook", diagnose=stack.diagnose)
        results = api.call("GET", f"/api/jobs/{job_id}/results?limit=100").json()["results"]
        requests_before = stack.fake.stats()["requests"]
        mine = "Your onboarding checklist post was the clearest I have read this year."
        edited = api.call("PATCH", f"/api/jobs/{job_id}/results/{results[2]['id']}",
                          {"opener": mine, "version": results[2]["version"]})
        assert edited.status == 200, edited.body[:300]
        rejected = [r["id"] for r in results[2:6]]  # the edited row among them
        marked = api.call("POST", f"/api/jobs/{job_id}/review", {"result_ids": rejected, "review": "rejected"})
        assert marked.json() == {"reviewed": 4}
        approved = [results[0]["id"], results[10]["id"], results[12]["id"]]
        marked = api.call("POST", f"/api/jobs/{job_id}/review", {"result_ids": approved, "review": "approved"})
        assert marked.json() == {"reviewed": 3}

        started = api.call("POST", f"/api/jobs/{job_id}/regenerate",
                           {"filter": {"review": "rejected"}, "feedback": "Shorter, and name their product."})
        assert started.status == 202, started.body[:300]
        assert started.json()["regenerating"] == 3  # the edited row is left alone
        stack.wait_job(job_id, urls=3)
        wait_for(lambda: len(receiver.requests) == 2, 20, what="second webhook", diagnose=stack.diagnose)
    event = json.loads(receiver.requests[1][1])
    assert event["type"] == "job.completed" and event["job"]["regenerated"] == 3

    rows = assert_finished_cleanly(stack.database_url, job_id, csv_file.valid)
    assert stack.fake.wait_quiet()["requests"] >= requests_before + 3  # the model was asked again
    after = {r["id"]: r for r in api.call("GET", f"/api/jobs/{job_id}/results?limit=100").json()["results"]}
    kept = after[rejected[0]]
    assert kept["opener"] == mine and kept["edited"] and kept["review"] == "rejected"
    for row_id in rejected[1:]:
        row = after[row_id]
        assert row["status"] == "completed" and row["feedback"] is None and row["review"] is None
        history = api.call("GET", f"/api/jobs/{job_id}/results/{row_id}").json()["result"]["history"]
        assert history[0]["source"] == "model" and history[-1]["opener"] == row["opener"]
    assert api.job(job_id)["quality"]["flagged"]["edited"] == 1
    approve_mine = api.call("PATCH", f"/api/jobs/{job_id}/results/{kept['id']}",
                            {"review": "approved", "version": kept["version"]})
    assert approve_mine.status == 200, approve_mine.body[:300]

    reply = api.call("GET", f"/api/upload/{job_id}/download?review=approved")
    assert reply.status == 200, reply.body[:300]
    table = list(csv.reader(io.StringIO(reply.body.decode("utf-8"), newline="")))
    wanted = {after[i]["row"] for i in [*approved, kept["id"]]}
    expected = [r for r in url_rows(stack.database_url, job_id) if r["row_number"] in wanted]
    assert [line[3] for line in table[1:]] == [r["opener"] for r in expected]  # in file order
    assert mine in [line[3] for line in table[1:]] and len(rows) == csv_file.valid

    # the rows the duplicate check flagged (the fake's openers share their templates), the
    # person's row left alone: as many as the results show flagged and not edited
    now = api.call("GET", f"/api/jobs/{job_id}/results?quality=duplicate&limit=100").json()["results"]
    expected = [r["id"] for r in now if not r["edited"]]
    again = api.call("POST", f"/api/jobs/{job_id}/regenerate", {"filter": {"quality": "duplicate"},
                                                                 "feedback": "Say something only they do."})
    if expected:
        assert again.status == 202 and again.json()["regenerating"] == len(expected), again.body[:300]
        stack.wait_job(job_id, urls=len(expected))
    else:
        assert again.status == 409 and again.json()["error"]["code"] == "nothing_to_regenerate"
    assert_finished_cleanly(stack.database_url, job_id, csv_file.valid)
    assert api.call("GET", f"/api/jobs/{job_id}/results/{kept['id']}").json()["result"]["opener"] == mine
    with capsys.disabled():
        print(f"\n[e2e] review: 3 rejected rows regenerated with feedback, then {len(expected)} flagged duplicate; "
              f"1 edit kept, {len(table) - 1} approved rows downloaded")
