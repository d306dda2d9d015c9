"""tf.data input pipelines over tfsr's gzip TFRecord samples.

`make_dataset` parses `tf.train.Example`s with the one :class:`~tfsr.features.FeatureSpec`, so the
tensors the model sees are exactly those the Beam job wrote and the serving signature parses.

Example:
  >>> spec = tfsr.layout.read_feature_spec(samples_dir)
  >>> train = make_dataset((samples_dir, "pretrain_train"), spec, batch_size=1024, repeat=True,
  ...                      domain_weights={"search_tags": 2.0, "rec_drama": 1.0})
  >>> model.fit(train, steps_per_epoch=100)

`make_items_dataset` reads the item catalogue (``items/``: every item once, its raw item features) for
two-tower retrieval:

  >>> items = make_items_dataset(samples_dir, spec, batch_size=4096,
  ...                            text_lookup=tfsr.text.lookup.TextLookup.from_samples(samples_dir, spec))

`synthetic_records` / `write_synthetic_samples` make small model-ready samples with real signal (for
tests, examples and benchmarks); the full synthetic *raw-log* generator lives in `tfsr.datasets`.
"""

from __future__ import annotations

import os
import pathlib
from collections.abc import Callable, Iterator, Mapping, Sequence

from tfsr import layout
from tfsr.contract import check_positive_int
from tfsr.features import RECORD_ROLES, ROLES, FeatureSpec

import numpy as np
import tensorflow as tf

FilesArg = str | os.PathLike | Sequence[str] | tuple[str | os.PathLike, str]
MAX_OPEN_SHARDS = 64  # files read at once by make_dataset's interleave (each holds a gzip read buffer)


def _is_split(files: FilesArg) -> bool:
    return isinstance(files, tuple) and len(files) == 2 and files[1] in layout.SPLITS


def _resolve_files(files: FilesArg) -> list[str]:
    """A glob pattern, a list of files, or `(samples_dir, split)` -> sorted list of files."""
    if _is_split(files):
        pattern = layout.split_pattern(files[0], files[1])
        paths = tf.io.gfile.glob(pattern)
    elif isinstance(files, str | os.PathLike):
        pattern = str(files)
        paths = tf.io.gfile.glob(pattern)
    else:
        pattern = repr(list(files))
        paths = [str(f) for f in files]
    if not paths:
        raise FileNotFoundError(f"no TFRecord files match {pattern}")
    return sorted(paths)


def _check_first_record(path: str, spec: FeatureSpec, parse_spec: dict) -> None:
    """Parses the first record of a file eagerly, so a mismatching file fails here, naming the feature
    (and, when `parse_spec` has a domain, a domain `spec` does not know)."""
    for record in tf.data.TFRecordDataset(path, compression_type="GZIP").take(1):
        try:
            parsed = tf.io.parse_single_example(record, parse_spec)
        except tf.errors.InvalidArgumentError as err:
            raise ValueError(f"{path}: record does not match the feature spec: {err.message}") from None
        if "domain" not in parsed:
            return
        domain = parsed["domain"].numpy().decode("utf-8", "replace")
        if domain not in spec.domains:
            raise ValueError(
                f"{path}: feature 'domain' has value {domain!r}, not one of {spec.domains.names}"
            )


def make_dataset(
    files: FilesArg,
    spec: FeatureSpec,
    batch_size: int,
    shuffle: bool = True,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    domain_weights: Mapping[str, float] | None = None,
    repeat: bool = False,
    drop_label: bool = False,
    shuffle_buffer: int = 10_000,
    drop_remainder: bool = False,
    text_lookup: Callable[[dict], dict] | None = None,
) -> tf.data.Dataset:
    """A batched dataset of feature dicts parsed from gzip TFRecords.

    Args:
      files: a glob pattern, a list of files, or `(samples_dir, split)` with a split of
        :data:`tfsr.layout.SPLITS`.
      spec: the feature specification the files were written with.
      batch_size: rows per batch.
      shuffle: shuffle the file order and, through a `shuffle_buffer`-row buffer, the rows
        (deterministically under `seed`). Rows are interleaved one at a time across files either way;
        the samples that `tfsr preprocess` writes are already in random order within and across
        shards, whatever the order of the logs, so the buffer only adds per-epoch variation.
      seed: the seed of every random choice in the pipeline.
      domains: keep only these domains (names); None keeps all.
      domain_weights: per-domain sampling weights (names -> weight > 0); rows are drawn from one
        dataset per domain with `tf.data.Dataset.sample_from_datasets`. Domains not named are dropped.
        Each per-domain stream reads the files once, so this costs one pass per domain. Use with
        `repeat=True`: without it the mix drifts once the small domains are exhausted.
      repeat: repeat forever.
      drop_label: drop the `label` feature (for prediction).
      shuffle_buffer: rows in the shuffle buffer.
      drop_remainder: drop the last, smaller batch.
      text_lookup: for samples that carry their texts only (``tfsr preprocess --text_features key``, the
        default): a callable adding the spec's derived text embeddings to a parsed batch, such as
        :class:`tfsr.text.lookup.TextLookup` (``samples_text_lookup(samples_dir, spec)``). The records
        are then parsed without the derived features. None: the records carry the vectors.

    Returns:
      A `tf.data.Dataset` of `dict[str, Tensor]` batches: scalars `[B]`, vectors `[B, n]`, varlen
      features `tf.RaggedTensor [B, None]`.

    Raises:
      FileNotFoundError: no file matches.
      ValueError: bad arguments, or the first record of a file does not match `spec` (naming the
        feature); records further in are checked when read (TensorFlow's error names the feature).
    """
    check_positive_int("batch_size", batch_size)
    if domains is not None and domain_weights is not None:
        raise ValueError("give domains or domain_weights, not both")
    for name in list(domains or []) + list(domain_weights or {}):
        if name not in spec.domains:
            raise ValueError(f"unknown domain {name!r}; known domains: {spec.domains.names}")
    if domain_weights is not None and (not domain_weights or any(not w > 0 for w in domain_weights.values())):
        raise ValueError(
            f"domain_weights must be a non-empty mapping of positive weights, got {dict(domain_weights)!r}"
        )

    if text_lookup is None and _is_split(files) and layout.text_features_mode(files[0]) == layout.TEXT_KEYS:
        raise ValueError(
            f"the samples in {files[0]} carry text keys, not embeddings: pass "
            "text_lookup=tfsr.text.lookup.samples_text_lookup(samples_dir, spec)"
        )
    paths = _resolve_files(files)
    parse_spec = spec.parse_spec(roles=RECORD_ROLES if text_lookup is not None else ROLES)
    for path in paths:
        _check_first_record(path, spec, parse_spec)

    options = tf.data.Options()
    options.deterministic = True
    file_ds = tf.data.Dataset.from_tensor_slices(paths)
    if shuffle:
        file_ds = file_ds.shuffle(len(paths), seed=seed, reshuffle_each_iteration=True)
    # One row from each open shard in turn (block_length 1) over up to MAX_OPEN_SHARDS shards: with
    # build_samples' shards (each in random key order) consecutive rows come from different shards.
    records = file_ds.interleave(
        lambda path: tf.data.TFRecordDataset(path, compression_type="GZIP"),
        cycle_length=min(len(paths), MAX_OPEN_SHARDS),
        block_length=1,
        num_parallel_calls=tf.data.AUTOTUNE,
        deterministic=True,
    )
    domain_spec = {"domain": parse_spec["domain"]}

    def domain_of(record):
        return tf.io.parse_single_example(record, domain_spec)["domain"]

    def only(names):
        names = tf.constant(list(names))
        return lambda record: tf.reduce_any(tf.equal(domain_of(record), names))

    if domains is not None:
        records = records.filter(only(domains))
    if domain_weights is not None:
        names = list(domain_weights)
        streams = []
        for i, name in enumerate(names):
            stream = records.filter(only([name]))
            if shuffle:
                stream = stream.shuffle(shuffle_buffer, seed=seed + i + 1)
            streams.append(stream.repeat() if repeat else stream)
        total = float(sum(domain_weights.values()))
        records = tf.data.Dataset.sample_from_datasets(
            streams, weights=[domain_weights[n] / total for n in names], seed=seed
        )
    else:
        if shuffle:
            records = records.shuffle(shuffle_buffer, seed=seed, reshuffle_each_iteration=True)
        if repeat:
            records = records.repeat()

    def parse(serialized):
        features = tf.io.parse_example(serialized, parse_spec)
        if text_lookup is not None:
            features = text_lookup(features)
        if drop_label:
            features.pop("label")
        return features

    dataset = records.batch(batch_size, drop_remainder=drop_remainder).map(
        parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True
    )
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


def make_items_dataset(
    samples_dir: str | os.PathLike,
    spec: FeatureSpec,
    batch_size: int,
    text_lookup: Callable[[dict], dict] | None = None,
) -> tf.data.Dataset:
    """The item catalogue of a samples directory (``items/``, :func:`tfsr.layout.items_pattern`), batched.

    Every item of the samples once (all splits, positives and negatives, warm and cold-start domains),
    parsed with the spec's raw item features (``spec.select(["raw"], entity="item")``), in a fixed
    order: the shards in name order, each in item_id order; no shuffling, so the i-th row of every pass
    is the same item.

    Args:
      samples_dir: a directory written by ``tfsr preprocess``.
      spec: the feature specification the samples were written with.
      batch_size: items per batch (the last batch may be smaller).
      text_lookup: a callable adding derived text embeddings to a parsed batch, such as
        :class:`tfsr.text.lookup.TextLookup` (``TextLookup.from_samples(samples_dir, spec)``): it adds
        ``item_title_embedding`` (and skips the query text, which the catalogue has not). The catalogue
        holds no embeddings, whatever the samples' text-feature mode. None: raw features only.

    Returns:
      A `tf.data.Dataset` of `dict[str, Tensor]` batches: for the default spec `item_id`, `item_title`
      and `item_decade` `[B]` strings, `item_genres` a `tf.RaggedTensor [B, None]`, and with a text
      lookup `item_title_embedding` `[B, text_dim]`.

    Raises:
      FileNotFoundError: `samples_dir` has no ``items/`` (it predates the item catalogue: re-run
        ``tfsr preprocess``).
      ValueError: a bad batch size, or the first record of a shard does not match `spec`.
    """
    check_positive_int("batch_size", batch_size)
    pattern = layout.items_pattern(samples_dir)
    if not tf.io.gfile.glob(pattern):
        raise FileNotFoundError(
            f"{samples_dir} has no item catalogue ({pattern} matches no file): the samples directory "
            f"predates the catalogue; re-run `tfsr preprocess` to write {layout.ITEMS_DIR}/"
        )
    paths = _resolve_files(pattern)
    names = {f.name for f in spec.select(["raw"], entity="item")}
    parse_spec = {name: value for name, value in spec.parse_spec(roles=("raw",)).items() if name in names}
    for path in paths:
        _check_first_record(path, spec, parse_spec)

    def parse(serialized):
        features = tf.io.parse_example(serialized, parse_spec)
        return text_lookup(features) if text_lookup is not None else features

    options = tf.data.Options()
    options.deterministic = True
    dataset = (
        tf.data.TFRecordDataset(paths, compression_type="GZIP")
        .batch(batch_size)
        .map(parse, num_parallel_calls=tf.data.AUTOTUNE, deterministic=True)
    )
    return dataset.prefetch(tf.data.AUTOTUNE).with_options(options)


# One planting of `synthetic_records(aspect_signal=...)` over the default spec's domains: ids carry the signal in
# three warm rec domains, genres (sparse) in one, text in search and in the cold-start domain (all items new).
PLANTED_ASPECTS = {
    "search_tags": "text",
    "rec_action": "id",
    "rec_comedy": "id",
    "rec_drama": "sparse",
    "rec_other": "id",
    "rec_children": "text",
}


def synthetic_records(
    spec: FeatureSpec,
    num_rows: int,
    seed: int = 0,
    num_users: int = 40,
    num_items: int = 80,
    num_queries: int = 20,
    latent_dim: int = 4,
    draw_seed: int | None = None,
    aspect_signal: Mapping[str, str] | None = None,
) -> Iterator[dict]:
    """Model-ready python records (the default feature schema) whose labels carry real signal.

    Users, items and queries have latent factors; an item's title embedding and a query's text
    embedding are noisy linear images of their factors, so text carries signal. Rec domains click with
    `p = sigmoid(2 u.v + shift_d)`, search domains with `p = sigmoid(2 q.v + u.v)`. Genres and the
    decade follow the item's factors. `seed` fixes the world (factors), `draw_seed` (default: `seed`)
    the rows drawn from it, so a test split is the same world with other rows.

    `aspect_signal` plants domain-dependent aspect informativeness, the situation Domain-Gating is
    for (Gong et al. 2023, §3.3; docs/MODEL.md, L1): `domain name -> "id" | "text" | "sparse"` names, for
    every domain of `spec`, the one aspect of the item and the query that carries their factors there.
    The other aspects are per-row noise: ids fresh (never repeated, so uninformative), text embeddings
    those of a random factor (distributed like real ones), genres and decade random. With "sparse"
    (rec domains only) the item's factor is the mean of its genres' centres. Clicks follow
    `sigmoid(2 (u + w).v + shift_d)` in rec domains and `sigmoid(2 q.v + (u + w).v)` in search ones,
    where `w` is a taste every user shares, so the informative aspect alone predicts clicks (which
    `tests/test_synthetic.py` checks in numpy). The user entity has only an id aspect: user ids stay
    informative everywhere. None (the default) gives the original records, draw for draw.
    """
    rng = np.random.default_rng(seed)
    text_dim = spec.text_dim
    users = rng.normal(size=(num_users, latent_dim)) / np.sqrt(latent_dim) * 1.5
    items = rng.normal(size=(num_items, latent_dim)) / np.sqrt(latent_dim) * 1.5
    queries = rng.normal(size=(num_queries, latent_dim)) / np.sqrt(latent_dim) * 1.5
    text_map = rng.normal(size=(latent_dim, text_dim)) / np.sqrt(latent_dim)
    genres = ["Action", "Comedy", "Drama", "Horror", "Romance", "Sci-Fi"]
    decades = ["1970s", "1980s", "1990s", "2000s"]
    domains = list(spec.domains)
    shifts = rng.normal(scale=0.5, size=len(domains))
    if aspect_signal is not None:
        _check_aspect_signal(spec, aspect_signal)
        shared_taste = rng.normal(size=latent_dim) / np.sqrt(latent_dim) * 1.5
        genre_centres = rng.normal(size=(len(genres), latent_dim)) / np.sqrt(latent_dim) * 1.5
    if draw_seed is not None:
        rng = np.random.default_rng([seed, draw_seed])

    def embed(factor):
        vector = factor @ text_map + rng.normal(scale=0.05, size=text_dim)
        return (vector / np.linalg.norm(vector)).astype(np.float32).tolist()

    def item_genre_ids(item):
        return np.argsort(-item)[:2] % len(genres)

    def plant(record, domain, u, i, q):
        """Keeps the factors in the domain's aspect only (the others become noise); returns the logit."""
        aspect = aspect_signal[domain.name]
        item = genre_centres[item_genre_ids(items[i])].mean(axis=0) if aspect == "sparse" else items[i]
        entities = [("item_id", "item_title_embedding")]
        if q is not None:
            entities.append(("query_id", "query_text_embedding"))
        for id_name, text_name in entities:
            if aspect != "id":
                record[id_name] = f"{id_name[0]}-fresh-{rng.integers(2**62)}"
            if aspect != "text":
                record[text_name] = embed(rng.normal(size=latent_dim))
        if aspect != "sparse":
            record["item_genres"] = [genres[j] for j in rng.choice(len(genres), size=2, replace=False)]
            record["item_decade"] = decades[int(rng.integers(len(decades)))]
        taste = users[u] + shared_taste
        if q is not None:
            return 2.0 * queries[q] @ item + taste @ item
        return 2.0 * taste @ item + shifts[domain.id]

    for _ in range(num_rows):
        domain = domains[rng.integers(len(domains))]
        u, i = int(rng.integers(num_users)), int(rng.integers(num_items))
        item = items[i]
        record = {
            "domain": domain.name,
            "user_id": f"u{u}",
            "item_id": f"i{i}",
            "item_title": f"title {i}",
            "item_title_embedding": embed(item),
            "item_genres": [genres[j] for j in item_genre_ids(item)],
            "item_decade": decades[int(np.argmax(item)) % len(decades)],
            "timestamp": int(rng.integers(1_000_000)),
        }
        q = None
        if domain.kind == "search":
            q = int(rng.integers(num_queries))
            record.update(query_id=f"q{q}", query_text=f"query {q}", query_text_embedding=embed(queries[q]))
            logit = 2.0 * queries[q] @ item + users[u] @ item
        else:
            record.update(query_text_embedding=[0.0] * text_dim)
            logit = 2.0 * users[u] @ item + shifts[domain.id]
        if aspect_signal is not None:
            logit = plant(record, domain, u, i, q)
        record["label"] = int(rng.random() < 1.0 / (1.0 + np.exp(-logit)))
        yield record


def _check_aspect_signal(spec: FeatureSpec, aspect_signal: Mapping[str, str]) -> None:
    """`aspect_signal` names every domain of `spec` once, with an aspect; "sparse" only for rec domains."""
    if set(aspect_signal) != set(spec.domains.names):
        raise ValueError(
            f"aspect_signal must name exactly the domains {spec.domains.names}, got {sorted(aspect_signal)}"
        )
    for name, aspect in aspect_signal.items():
        if aspect not in ("id", "text", "sparse"):
            raise ValueError(f"aspect_signal[{name!r}] must be 'id', 'text' or 'sparse', got {aspect!r}")
        if aspect == "sparse" and spec.domains[name].kind == "search":
            raise ValueError(
                f"aspect_signal[{name!r}] = 'sparse' is for rec domains: a query has no sparse aspect"
            )


def write_synthetic_samples(
    directory: str | os.PathLike,
    spec: FeatureSpec,
    num_rows: int,
    seed: int = 0,
    num_shards: int = 2,
    **kwargs,
) -> str:
    """Writes `synthetic_records` as gzip TFRecord shards; returns their glob pattern."""
    directory = pathlib.Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    options = tf.io.TFRecordOptions(compression_type="GZIP")
    writers = [
        tf.io.TFRecordWriter(str(directory / f"part-{s:05d}{layout.TFRECORD_SUFFIX}"), options)
        for s in range(num_shards)
    ]
    for n, record in enumerate(synthetic_records(spec, num_rows, seed, **kwargs)):
        writers[n % num_shards].write(spec.to_example(record).SerializeToString())
    for writer in writers:
        writer.close()
    return str(directory / f"part-*{layout.TFRECORD_SUFFIX}")
