"""The job's quality counters (jobs.quality), moved by the statements that change URL rows:
save_results adds the rows it wrote, reset_for_regenerate takes away the rows it resets.

{"verified", "generic", "unsupported", "regenerated", "reused": n, "flagged": {flag: n},
"words": {"<words>": n}}. Both fragments are parts of an f-string query (braces doubled).
"""

from __future__ import annotations


def quality_sums(rows: str) -> str:
    """The SELECT list of the counters of the rows in CTE `rows` (with columns grounding,
    regenerations, reused, quality, words): the columns verified, generic, unsupported,
    regenerated, reused, flagged, words."""
    return f"""count(*) FILTER (WHERE grounding = 'verified') AS verified,
                      count(*) FILTER (WHERE grounding = 'generic') AS generic,
                      count(*) FILTER (WHERE grounding = 'unsupported') AS unsupported,
                      coalesce(sum(regenerations), 0) AS regenerated,
                      count(*) FILTER (WHERE reused) AS reused,
                      (SELECT coalesce(jsonb_object_agg(flag, n), '{{}}') FROM (
                           SELECT flag, count(*) AS n FROM {rows}, unnest({rows}.quality) AS flag GROUP BY flag) f
                      ) AS flagged,
                      (SELECT coalesce(jsonb_object_agg(w::text, n), '{{}}') FROM (
                           SELECT words AS w, count(*) AS n FROM {rows} WHERE words IS NOT NULL GROUP BY words) h
                      ) AS words"""


def _histogram(old: str, sums: str, sign: str) -> str:
    # Two {key: count} objects added (or subtracted) key by key; after a subtraction the keys
    # left at zero are dropped.
    having = " HAVING sum(v::int) <> 0" if sign == "-" else ""
    other = "(-value::int)::text" if sign == "-" else "value"
    return f"""(SELECT coalesce(jsonb_object_agg(k, n), '{{}}') FROM (
                      SELECT k, sum(v::int) AS n FROM (
                          SELECT key AS k, value AS v FROM jsonb_each_text(coalesce({old}, '{{}}'))
                          UNION ALL SELECT key, {other} FROM jsonb_each_text({sums})) a
                      GROUP BY k{having}) b)"""


def quality_moved(sign: str, sums: str = "s") -> str:
    """The job's new ``quality`` (an expression on `j`, the jobs row): its counters plus (`sign`
    '+') or minus ('-') the columns of `quality_sums` in the row `sums`."""
    if sign not in ("+", "-"):
        raise ValueError(sign)
    scalars = ",\n".join(
        f"'{k}', coalesce((j.quality->>'{k}')::int, 0) {sign} {sums}.{k}"
        for k in ("verified", "generic", "unsupported", "regenerated", "reused"))
    return f"""jsonb_build_object(
                      {scalars},
                      'flagged', {_histogram("j.quality->'flagged'", f"{sums}.flagged", sign)},
                      'words', {_histogram("j.quality->'words'", f"{sums}.words", sign)})"""
