"""A regeneration's feedback (issue 21) in a row's prompt: in the row's own part after its data
(the job's constant part stays a cacheable prefix), made one line and capped, and handed to the
generator only when there is some."""

from __future__ import annotations

from chalicelib.generation import checks
from chalicelib.generation.openers import Opener
from chalicelib.generation.prompt import MAX_FEEDBACK_CHARS, build_messages

URL = "https://acme.example/"


def test_feedback_comes_after_the_rows_data_and_never_in_the_system_message():
    plain = build_messages(URL, "We sell maps.", {"company": "Acme"}, "Acme makes anvils.")
    given = build_messages(URL, "We sell maps.", {"company": "Acme"}, "Acme makes anvils.",
                           feedback="  Shorter,\n and mention\ttheir anvils. ")
    assert given[0] == plain[0]  # the job's constant part is untouched
    user = given[1]["content"]
    assert "Shorter, and mention their anvils." in user
    assert user.index("</page>") < user.index("Shorter") < user.index("Write the opener in")
    assert user.replace("\n\nThe sender's feedback on an earlier opener for this prospect (follow it): "
                        "Shorter, and mention their anvils.", "") == plain[1]["content"]


def test_blank_feedback_changes_nothing_and_long_feedback_is_capped():
    assert build_messages(URL, feedback="   ") == build_messages(URL) == build_messages(URL, feedback=None)
    long = build_messages(URL, feedback="x" * 5000)[1]["content"]
    assert "x" * MAX_FEEDBACK_CHARS in long and "x" * (MAX_FEEDBACK_CHARS + 1) not in long


class Recorder:
    def __init__(self) -> None:
        self.calls: list[dict] = []

    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        self.calls.append(data)
        return Opener(text="Your anvil catalogue reads like a love letter to good steel work.",
                      prompt_tokens=10, completion_tokens=5, attempts=1, evidence=None)


def run(feedback):
    recorder = Recorder()
    checks.generate_checked(recorder, job_id="j", url=URL, instructions=None, model=None,
                            options=checks.Options(language="en", grounding="flag"), feedback=feedback)
    return recorder.calls


def test_the_generator_is_told_the_feedback_only_when_there_is_some():
    assert all(call["feedback"] == "Shorter." for call in run("Shorter."))
    assert all("feedback" not in call for call in run(None))  # generators that predate it keep working
