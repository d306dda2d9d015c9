"""Dataset readers and generators that feed the Beam sample builder (``beam_jobs/build_samples.py``).

* :mod:`tfsr.datasets.movielens`: the ml-latest-small reader, its row-level parsers and the pure
  mapping rules (domains, labels, constructed search impressions, splits) to unified search +
  recommendation samples.
* :mod:`tfsr.datasets.logs`: the generic search-log / rec-log format (JSONL or CSV, one row per
  impression) a team uses to bring its own logs.
* :mod:`tfsr.datasets.synthetic`: a seeded, streaming generator of generic-format logs for tests and
  scale runs.

Nothing here imports TensorFlow or Beam, so the rules are cheap to test and to reuse.
"""

from tfsr.datasets.movielens import RowError

__all__ = ["RowError"]
