"""A generator for the checks' unit tests (tests/unit/generation/test_checks_shapes.py,
test_variants.py): the answers a model would give, in order, and what each call was told."""

from __future__ import annotations

from chalicelib.generation.answers import Opener


class Scripted:
    """Answers in order (the last repeats), each a list of (opener, evidence), given as the real
    generator gives them: ``Opener.variants`` holds every opener only when more than one was
    asked for. ``calls``: each call's keyword arguments (``reask``, ``variants``, ...)."""

    def __init__(self, *answers: list[tuple[str, str | None]], completion_tokens: int = 20) -> None:
        self.answers = list(answers)
        self.completion_tokens = completion_tokens
        self.calls: list[dict] = []

    def generate(self, url, instructions=None, model=None, should_stop=lambda: False, account=None, **data):
        self.calls.append(data)
        items = self.answers.pop(0) if len(self.answers) > 1 else self.answers[0]
        return Opener(text=items[0][0], evidence=items[0][1], prompt_tokens=100,
                      completion_tokens=self.completion_tokens, attempts=1,
                      variants=tuple(items) if len(items) > 1 else ())
