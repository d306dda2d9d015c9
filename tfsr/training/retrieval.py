"""The training stages of a retrieval model: its input (the clicks, with their items' sampling
probabilities), its validation (Recall@100 over the whole catalogue) and its evaluation (per domain
Recall@10 / @100 and NDCG@10 next to the popularity baseline and any other retrieval models).

:mod:`tfsr.training.workflows` calls these when the model is a :class:`tfsr.models.RetrievalModel`, so
``tfsr train --model_type retrieval``, ``tfsr finetune`` and ``tfsr evaluate`` work as for the rankers.
The catalogue is every item of the samples directory (``items/``, written by ``tfsr preprocess``).
"""

from __future__ import annotations

import collections
import dataclasses
import datetime as _dt
import functools
import json
import logging
import pathlib
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import tfsr
from tfsr import data, layout, retrieval_metrics
from tfsr.models import CANDIDATE_PROBABILITY, RetrievalModel
from tfsr.models.retrieval import NEGATIVE_PREFIX
from tfsr.text.lookup import TextLookup, samples_text_lookup
from tfsr.training import workflows

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfsr.training")

MONITOR = "val_recall_at_100"
# The splits before a split, whose clicks are its users' history: left out of their retrieved items
# (the standard protocol: a user clicks an item once, so a seen item is never a held-out click), and the
# first one gives the popularity baseline's counts.
SEEN_SPLITS_OF = {
    layout.PRETRAIN_VALID: (layout.PRETRAIN_TRAIN,),
    layout.PRETRAIN_EVAL: (layout.PRETRAIN_TRAIN, layout.PRETRAIN_VALID),
    layout.COLDSTART_VALID: (layout.COLDSTART_FINETUNE,),
    layout.COLDSTART_EVAL: (layout.COLDSTART_FINETUNE, layout.COLDSTART_VALID),
}
POPULARITY = "popularity"


def is_retrieval(model) -> bool:
    return isinstance(model, RetrievalModel)


# --------------------------------------------------------------------------- input
def _clicks(batches: tf.data.Dataset) -> tf.data.Dataset:
    """Rows with `label == 1` only."""
    return batches.unbatch().filter(lambda row: tf.reshape(row["label"], []) > 0)


def clicked_items(
    samples_dir, split: str, spec, domains: Sequence[str] | None = None
) -> dict[str, np.ndarray]:
    """``{"domain", "user_id", "item_id"}`` (bytes arrays) of the clicks of a split, in file order."""
    ds = workflows.make_dataset(samples_dir, split, spec, 4096, shuffle=False, domains=domains)
    parts = {"domain": [], "user_id": [], "item_id": []}
    for batch in ds:
        clicked = batch["label"].numpy().reshape(-1) > 0
        for key in parts:
            parts[key].append(batch[key].numpy().reshape(-1)[clicked])
    return {k: np.concatenate(v) if v else np.array([], dtype=object) for k, v in parts.items()}


def candidate_probability_table(
    samples_dir, split: str, spec, domains: Sequence[str] | None = None
) -> tf.lookup.StaticHashTable:
    """item id -> its share of the split's clicks (`q` of the sampling-bias correction)."""
    items = clicked_items(samples_dir, split, spec, domains)["item_id"]
    if items.size == 0:
        raise ValueError(f"the {split!r} split has no clicks of the domains {list(domains or [])}")
    counts = collections.Counter(items.tolist())
    keys = list(counts)
    values = np.array([counts[k] for k in keys], dtype=np.float32) / float(items.size)
    return tf.lookup.StaticHashTable(
        tf.lookup.KeyValueTensorInitializer(tf.constant(keys, tf.string), tf.constant(values)),
        default_value=float(values.min()),
    )


def clicks_dataset(
    samples_dir,
    split: str,
    spec,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    probability: tf.lookup.StaticHashTable | None = None,
    negatives: int = 0,
) -> tf.data.Dataset:
    """The clicks of a split in batches of `batch_size` clicks, each row with its item's
    ``candidate_probability`` when a table is given, and `negatives` items drawn uniformly from the
    catalogue per batch (``negative_<feature>``, with ``negative_candidate_probability``: their expected
    count per batch row, ``negatives / (catalogue size * batch rows)``, on the scale of the clicks' `q`)."""
    rows = _clicks(
        workflows.make_dataset(samples_dir, split, spec, 1024, shuffle=shuffle, seed=seed, domains=domains)
    )
    batches = rows.batch(batch_size)
    if probability is not None:
        batches = batches.map(lambda b: {**b, CANDIDATE_PROBABILITY: probability.lookup(b["item_id"])})
    if negatives:
        size = catalogue_size(samples_dir, spec)
        items = (
            data.make_items_dataset(samples_dir, spec, 1024, text_lookup=item_lookup(samples_dir, spec))
            .unbatch()
            .shuffle(min(size, 100_000), seed=seed, reshuffle_each_iteration=True)
            .repeat()
            .batch(negatives)
        )

        def join(clicks, sampled):
            rows = tf.cast(tf.shape(clicks["item_id"])[0], tf.float32)
            share = tf.fill([negatives], negatives / (size * rows))
            sampled = {**sampled, CANDIDATE_PROBABILITY: share}
            return {**clicks, **{f"{NEGATIVE_PREFIX}{k}": v for k, v in sampled.items()}}

        batches = tf.data.Dataset.zip((batches, items)).map(join)
    return batches.prefetch(tf.data.AUTOTUNE)


def catalogue_size(samples_dir, spec) -> int:
    """Items in the catalogue: the manifest's count, else counted."""
    try:
        counted = layout.read_manifest(samples_dir).get("items")
    except FileNotFoundError:
        counted = None
    if counted is None:
        counted = sum(
            int(tf.shape(b["item_id"])[0]) for b in data.make_items_dataset(samples_dir, spec, 4096)
        )
    if not counted:
        raise ValueError(f"the item catalogue of {samples_dir} is empty")
    return int(counted)


# --------------------------------------------------------------------------- catalogue
@dataclasses.dataclass
class Catalogue:
    """Every item of a samples directory and its candidate-tower embedding."""

    ids: np.ndarray  # [M] bytes
    embeddings: np.ndarray  # [M, D] float32

    @functools.cached_property
    def _position(self) -> dict[bytes, int]:
        return {item: i for i, item in enumerate(self.ids.tolist())}

    def index_of(self, item_ids: np.ndarray) -> np.ndarray:
        """Catalogue row of each id (-1 for an id not in the catalogue)."""
        position = self._position
        return np.array([position.get(item, -1) for item in np.asarray(item_ids).tolist()], dtype=np.int64)


def item_lookup(samples_dir, spec) -> TextLookup:
    """The text lookup of the catalogue's items (their rows carry texts only, whatever the samples' mode)."""
    return samples_text_lookup(samples_dir, spec) or TextLookup.from_samples(
        samples_dir, spec, missing="error"
    )


def embed_catalogue(model: RetrievalModel, samples_dir, spec, batch_size: int = 4096) -> Catalogue:
    """The candidate tower over every item of ``<samples_dir>/items``."""
    ids, embeddings = [], []
    for batch in data.make_items_dataset(
        samples_dir, spec, batch_size, text_lookup=item_lookup(samples_dir, spec)
    ):
        ids.append(batch["item_id"].numpy())
        embeddings.append(model.candidate_embeddings(batch).numpy())
    if not ids:
        raise ValueError(f"the item catalogue of {samples_dir} is empty")
    return Catalogue(np.concatenate(ids), np.concatenate(embeddings))


# --------------------------------------------------------------------------- scoring
Scorer = Callable[[dict], np.ndarray]


def model_scorer(model: RetrievalModel, catalogue: Catalogue) -> Scorer:
    """A batch of contexts -> `[B, M]` dot products with every catalogue item."""
    index = tf.constant(catalogue.embeddings)
    return lambda batch: tf.linalg.matmul(model.context_embeddings(batch), index, transpose_b=True).numpy()


def popularity_scorer(catalogue: Catalogue, samples_dir, split: str, spec, domains: Sequence[str]) -> Scorer:
    """A batch of contexts -> each row's domain's click counts in `split` over the catalogue (ties broken by
    catalogue order): the popularity baseline."""
    clicks = clicked_items(samples_dir, split, spec, domains)
    size = len(catalogue.ids)
    scores = {}
    for name in domains:
        rows = catalogue.index_of(clicks["item_id"][clicks["domain"].astype(str) == name])
        counts = np.bincount(rows[rows >= 0], minlength=size).astype(np.float64)
        scores[name.encode()] = counts - np.arange(size) / size
    return lambda batch: np.stack([scores[d] for d in batch["domain"].numpy().reshape(-1)])


def seen_items(catalogue: Catalogue, samples_dir, splits: Sequence[str], spec) -> dict[bytes, np.ndarray]:
    """user id -> the catalogue rows the user clicked in `splits` (any domain)."""
    rows: dict[bytes, list[np.ndarray]] = collections.defaultdict(list)
    for split in splits:
        clicks = clicked_items(samples_dir, split, spec)
        index = catalogue.index_of(clicks["item_id"])
        for user in np.unique(clicks["user_id"]):
            rows[user].append(index[(clicks["user_id"] == user) & (index >= 0)])
    return {user: np.unique(np.concatenate(parts)) for user, parts in rows.items()}


def retrieve_clicks(
    scorer: Scorer,
    catalogue: Catalogue,
    samples_dir,
    split: str,
    spec,
    domains: Sequence[str],
    seen: Mapping[bytes, np.ndarray] | None = None,
    k: int = max(retrieval_metrics.KS),
    batch_size: int = 1024,
) -> dict[str, np.ndarray]:
    """Every click of `split` as a query: ``{"domain" [N], "truth" [N] catalogue rows, "top_k" [N, k]}``,
    the user's `seen` items left out of its top k."""
    domain, truth, top = [], [], []
    for batch in _clicks(
        workflows.make_dataset(samples_dir, split, spec, 4096, shuffle=False, domains=domains)
    ).batch(batch_size):
        scores = scorer(batch)
        exclude = [
            seen.get(user, np.zeros([0], np.int64)) if seen else np.zeros([0], np.int64)
            for user in batch["user_id"].numpy().reshape(-1)
        ]
        top.append(retrieval_metrics.top_k_excluding(scores, exclude, k))
        domain.append(batch["domain"].numpy().reshape(-1))
        truth.append(catalogue.index_of(batch["item_id"].numpy().reshape(-1)))
    if not top:
        return {
            "domain": np.array([], dtype=object),
            "truth": np.array([], np.int64),
            "top_k": np.zeros([0, k], np.int64),
        }
    return {"domain": np.concatenate(domain), "truth": np.concatenate(truth), "top_k": np.concatenate(top)}


def split_domains(model, spec, split: str) -> list[str]:
    """The model's domains that a split holds: the cold-start ones for ``coldstart_*``, the warm ones else."""
    cold = {d.name for d in spec.domains.cold()}
    return [d for d in workflows.model_domains(model, spec) if (d in cold) == split.startswith("coldstart")]


def evaluate_split(
    models: Mapping[str, RetrievalModel],
    samples_dir,
    spec,
    split: str,
    domains: Sequence[str],
    exclude_seen: bool = True,
) -> dict[str, dict[str, dict[str, float]]]:
    """``{domain: {method: metrics}}`` on the clicks of `split`: each model against its own embedding of
    the whole catalogue, and the popularity baseline (the domain's most clicked items in the training split
    of `split`); with `exclude_seen`, each user's clicks of the earlier splits (``SEEN_SPLITS_OF``) are
    left out of its retrieved items, for every method alike."""
    results: dict[str, dict[str, dict[str, float]]] = {d: {} for d in domains}
    catalogues = {name: embed_catalogue(model, samples_dir, spec) for name, model in models.items()}
    # every model's catalogue lists the same items in the same order (items/): the users' history and the
    # popularity counts, in catalogue rows, are read once for all methods
    first = next(iter(catalogues.values()))
    seen = seen_items(first, samples_dir, SEEN_SPLITS_OF[split], spec) if exclude_seen else None
    methods = [
        (POPULARITY, popularity_scorer(first, samples_dir, SEEN_SPLITS_OF[split][0], spec, domains), domains)
    ]
    for name, model in models.items():
        known = [d for d in domains if d in model.domain_registry]  # a compared model may lack one
        methods.append((name, model_scorer(model, catalogues[name]), known))
    for method, scorer, known in methods:
        if not known:
            continue
        found = retrieve_clicks(scorer, first, samples_dir, split, spec, known, seen)
        for domain in known:
            mask = found["domain"].astype(str) == domain
            if mask.any():
                ranks = retrieval_metrics.hit_ranks(found["top_k"][mask], found["truth"][mask])
                results[domain][method] = retrieval_metrics.metrics_from_ranks(ranks)
    return {d: r for d, r in results.items() if r}


def validation_metrics(model: RetrievalModel, samples_dir, spec, split: str, domains: Sequence[str]) -> dict:
    """The model on a validation split: ``val_recall_at_100`` (the monitor), ``val_recall_at_10`` and
    ``val_ndcg_at_10``, each the mean over the domains (each domain counts once), and per domain."""
    per_domain = evaluate_split({"model": model}, samples_dir, spec, split, domains)
    if not per_domain:
        raise ValueError(f"the validation split {split!r} has no clicks of the domains {list(domains)}")
    metrics = {}
    for key in ("recall_at_100", "recall_at_10", "ndcg_at_10"):
        values = [r["model"][key] for r in per_domain.values()]
        metrics[f"val_{key}"] = float(np.mean(values))
        metrics.update({f"val_{d}_{key}": r["model"][key] for d, r in per_domain.items()})
    return metrics


def run_evaluate(
    model,
    samples_dir,
    output_dir=None,
    splits: Sequence[str] | None = None,
    compare: Mapping[str, Any] | None = None,
    name: str | None = None,
) -> dict[str, Any]:
    """Evaluates a retrieval model (object or saved path) on each split's clicks, next to the popularity
    baseline and the `compare` models ({name: model or path}); writes ``retrieval.json`` and
    ``retrieval.md`` to `output_dir` when given. Returns ``{"splits": {split: {domain: {method: metrics}}},
    "meta": ...}``."""
    from tfsr.models import load_model

    def loaded(m):
        return load_model(str(workflows.resolve_model_path(m))) if isinstance(m, str | pathlib.Path) else m

    spec = layout.read_feature_spec(samples_dir)
    main_name = name or (pathlib.Path(model).name if isinstance(model, str | pathlib.Path) else "model")
    models = {main_name: loaded(model), **{k: loaded(v) for k, v in (compare or {}).items()}}
    for label, m in models.items():
        if not is_retrieval(m):
            raise ValueError(f"{label} is not a retrieval model (model_type {m.config.model_type!r})")
    primary = models[main_name]
    splits = list(splits) if splits else workflows.default_eval_splits(primary, spec)
    started = time.perf_counter()
    rep: dict[str, Any] = {"splits": {}}
    for split in splits:
        domains = split_domains(primary, spec, split)
        rep["splits"][split] = evaluate_split(models, samples_dir, spec, split, domains)
    rep["meta"] = {
        "model": main_name,
        "methods": [POPULARITY, *models],
        "model_types": {k: m.config.model_type for k, m in models.items()},
        "samples_dir": str(samples_dir),
        "catalogue_items": catalogue_size(samples_dir, spec),
        "eval_seconds": round(time.perf_counter() - started, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tfsr_version": tfsr.__version__,
    }
    if output_dir is not None:
        out = pathlib.Path(output_dir)
        out.mkdir(parents=True, exist_ok=True)
        (out / "retrieval.json").write_text(json.dumps(rep, indent=1) + "\n", encoding="utf-8")
        (out / "retrieval.md").write_text(format_report(rep), encoding="utf-8")
        log.info("wrote the retrieval report to %s", out)
    return rep


def format_report(rep: Mapping[str, Any]) -> str:
    """The report as markdown: one table per split, a row per domain and method."""
    lines = [
        f"# Retrieval: {rep['meta']['model']}",
        "",
        f"Catalogue: {rep['meta']['catalogue_items']:,} items; every click of the split is one query.",
    ]
    for split, domains in rep["splits"].items():
        lines += [
            "",
            f"## {split}",
            "",
            "| domain | method | clicks | Recall@10 | Recall@100 | NDCG@10 |",
            "|---|---|---|---|---|---|",
        ]
        for domain, methods in domains.items():
            for method, m in methods.items():
                lines.append(
                    f"| {domain} | {method} | {m['count']} | {m['recall_at_10']:.4f} | "
                    f"{m['recall_at_100']:.4f} | {m['ndcg_at_10']:.4f} |"
                )
    return "\n".join(lines) + "\n"
