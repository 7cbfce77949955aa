"""Openers you can trust: the checks of one answer against its source, and the job-wide index
of accepted openers that finds near-duplicates (SPEC "Openers you can trust").

Below ``generation`` in the layers: pure functions on an answer and its source, plus the
duplicate index adapter around an injected Redis client. The worker, batch mode and preview call
it in this order: ``answer`` (``response_format`` out, ``parse_answer`` back, or
``json_instruction`` / ``parse_lenient`` for a server that ``refuses_response_format``),
``grounding.check`` against the row's ``grounding.Source``, ``flags.check``; re-ask with
``flags.reask_message`` when something is missing or flagged; and last, on the opener about to
be kept, ``DuplicateIndex.check_and_add`` (it stores what it accepts, so an opener that is then
thrown away would haunt the job's later rows).
"""

from chalicelib.quality.answer import (
    MAX_EVIDENCE_CHARS,
    MAX_OPENER_CHARS,
    Answer,
    AnswerError,
    parse_answer,
    parse_answers,
    parse_lenient,
    parse_lenient_answers,
    response_format,
)
from chalicelib.quality.duplicates import DuplicateIndex, Verdict, is_near_duplicate
from chalicelib.quality.flags import Checked, check_word_limits, count_words, reask_message
from chalicelib.quality.grounding import GENERIC, UNSUPPORTED, VERIFIED, Grounding, Source
from chalicelib.quality.language import is_wrong_language, page_language

__all__ = [
    "GENERIC", "MAX_EVIDENCE_CHARS", "MAX_OPENER_CHARS", "UNSUPPORTED", "VERIFIED", "Answer", "AnswerError",
    "Checked", "DuplicateIndex", "Grounding", "Source", "Verdict", "check_word_limits", "count_words",
    "is_near_duplicate", "is_wrong_language", "page_language", "parse_answer", "parse_answers", "parse_lenient",
    "parse_lenient_answers", "reask_message", "response_format",
]
