"""Review before sending (SPEC): a job's results as a review queue. `edits`: one result with its
history, a person's edit or review mark (with a version precondition), marks in bulk;
`regenerate`: rows of a finished job through the model again, with feedback.

Above `jobs` in the layers: it builds on a job's views, options and capacity checks. `app.py`
calls `review.<service>(...)` from the surface below.
"""

from chalicelib.review.edits import edit, get_result, review_results
from chalicelib.review.regenerate import regenerate

__all__ = ["edit", "get_result", "regenerate", "review_results"]
