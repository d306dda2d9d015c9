"""Dataset readers and generators that feed the Beam sample builder (``beam_jobs/build_samples.py``).

* :mod:`tfsr.datasets.rows`: the row primitives of every input format (decoding, CSV, the query id).
* :mod:`tfsr.datasets.splits`: the split policy of every source (per-user or global time cutoffs,
  cold-start slices, item cold-start markers).
* :mod:`tfsr.datasets.logs`: the generic search-log / rec-log format (JSONL or CSV, one row per
  impression) a team uses to bring its own logs; its columns derive from the feature spec.
* :mod:`tfsr.datasets.movielens`: the ml-latest-small reader, its row parsers, its domains
  (``MOVIELENS_DOMAINS``) and the pure mapping rules to unified search + recommendation samples;
  :mod:`tfsr.datasets.search_impressions` constructs its search impressions.
* :mod:`tfsr.datasets.synthetic`: a seeded, streaming generator of generic-format logs for tests and
  scale runs.

A row that cannot be used raises :class:`tfsr.contract.RowError`. Nothing here imports TensorFlow or
Beam, so the rules are cheap to test and to reuse.
"""
