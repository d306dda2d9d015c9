"""The feature specification: the single source of truth for every feature tfsr reads or writes.

Every consumer derives what it needs from one :class:`FeatureSpec` so that training and serving
cannot drift apart (no training-serving skew):

* the Beam writer encodes python records with :meth:`FeatureSpec.to_example`;
* the tf.data reader parses TFRecords with :meth:`FeatureSpec.parse_spec`;
* the model builds its inputs with :meth:`FeatureSpec.keras_inputs`;
* the exporter builds the serving signatures from :meth:`FeatureSpec.serving_tensor_specs`.

Each feature belongs to an *entity* (user / query / item / context) and, where the model encodes it,
to an *aspect* (id / text / sparse) — the three aspects of the paper's L0 level (Gong et al. 2023, §3.2).
A feature's *role* says where it lives:

* ``raw``: present in logs and in serving requests (ids, texts, sparse values, the domain);
* ``derived``: computed by the Beam job for training (the frozen text encoder's embeddings), computed
  in the graph at serving time;
* ``label``: the click, never a serving input;
* ``meta``: bookkeeping carried in samples (timestamp, item-cold-start marker), not a model input.

The spec also says which features are vocabulary features (:attr:`FeatureSpec.vocab_features`: raw ids
and sparse values) and which text features get a derived embedding (:attr:`FeatureSpec.text_embeddings`);
the Beam jobs and the log format derive theirs from it. The gate-weight axes and the row-error type are
owned by :mod:`tfsr.contract`, the only module of tfsr this one imports: everything may import it.
It is longer than most modules on purpose: the spec's definitions, validation and encodings are one
contract, kept in one place so that they cannot drift apart.
"""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Iterable, Mapping, Sequence, Set
from typing import Any

from tfsr import contract
from tfsr.contract import RowError

# the entities of the gate axes (tfsr.contract) plus "context": domain, label and bookkeeping features
ENTITIES = (*contract.ENTITIES, "context")
ASPECTS = contract.ASPECTS
ROLES = ("raw", "derived", "label", "meta")
# a sample record before its derived text embeddings are joined in (parsed logs, Beam samples)
RECORD_ROLES = ("raw", "label", "meta")
DTYPES = ("string", "int64", "float32")
DOMAIN_KINDS = ("search", "rec")

SCHEMA_VERSION = 1
DEFAULT_TEXT_DIM = 384
# Characters an id or sparse value may not hold: the C0/C1 controls (NUL, tab, \n, \r, \v, form feed, the
# file/group/record separators, DEL, U+0085) and the Unicode line/paragraph separators. Such values end up
# in newline-joined vocabulary files (one value a line, read back with str.splitlines), which they would
# split or corrupt (issue 17); texts (query_text, item_title) may hold them, they are never vocabulary.
FORBIDDEN_ID_CHARS = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029]")


@dataclasses.dataclass(frozen=True)
class Feature:
    """One feature of the multi-domain samples.

    Args:
      name: feature key in `tf.train.Example`s and model inputs.
      dtype: "string", "int64" or "float32".
      entity: "user", "query", "item" or "context".
      role: "raw", "derived", "label" or "meta" (see the module docstring).
      aspect: "id", "text", "sparse" or None when the model does not encode it as an aspect.
      shape: () for a scalar, (n,) for a fixed-length vector. Ignored when `varlen`.
      varlen: True for a variable-length list (multi-valued sparse features).
      default: value used when an optional feature is missing; None makes the feature required.
      source: for derived features, the raw feature they are computed from.
      description: one line for the data card.
    """

    name: str
    dtype: str
    entity: str
    role: str = "raw"
    aspect: str | None = None
    shape: tuple[int, ...] = ()
    varlen: bool = False
    default: Any = None
    source: str | None = None
    description: str = ""

    def __post_init__(self):
        if self.dtype not in DTYPES:
            raise ValueError(f"Feature {self.name!r}: dtype must be one of {DTYPES}, got {self.dtype!r}")
        if self.entity not in ENTITIES:
            raise ValueError(f"Feature {self.name!r}: entity must be one of {ENTITIES}, got {self.entity!r}")
        if self.role not in ROLES:
            raise ValueError(f"Feature {self.name!r}: role must be one of {ROLES}, got {self.role!r}")
        if self.aspect is not None and self.aspect not in ASPECTS:
            raise ValueError(
                f"Feature {self.name!r}: aspect must be one of {ASPECTS} or None, got {self.aspect!r}"
            )
        if self.role == "derived" and not self.source:
            raise ValueError(f"Feature {self.name!r}: a derived feature needs a source feature")
        if self.varlen and self.shape:
            raise ValueError(f"Feature {self.name!r}: a varlen feature cannot also have a fixed shape")

    @property
    def required(self) -> bool:
        return self.default is None and not self.varlen

    @property
    def size(self) -> int:
        """Number of values of a fixed-shape feature (1 for a scalar)."""
        return math.prod(self.shape) if self.shape else 1

    def to_json(self) -> dict:
        data = dataclasses.asdict(self)
        data["shape"] = list(self.shape)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> Feature:
        data = dict(data)
        data["shape"] = tuple(data.get("shape", ()))
        return cls(**data)


@dataclasses.dataclass(frozen=True)
class Domain:
    """One search or recommendation domain (a scenario of the paper, §3.1).

    Args:
      name: the value of the `domain` feature in samples and requests.
      kind: "search" (samples carry a query) or "rec".
      id: dense integer id used by the model's domain embeddings, 0..K-1.
      cold_start: held out of pretraining and used for cold-start fine-tuning.
    """

    name: str
    kind: str
    id: int
    cold_start: bool = False

    def __post_init__(self):
        if self.kind not in DOMAIN_KINDS:
            raise ValueError(f"Domain {self.name!r}: kind must be one of {DOMAIN_KINDS}, got {self.kind!r}")
        if self.id < 0:
            raise ValueError(f"Domain {self.name!r}: id must be >= 0, got {self.id}")


class DomainRegistry:
    """The ordered set of domains a dataset and a model know, with dense ids 0..K-1."""

    def __init__(self, domains: Sequence[Domain]):
        domains = tuple(domains)
        if not domains:
            raise ValueError("DomainRegistry needs at least one domain, got none")
        ids = [d.id for d in domains]
        if sorted(ids) != list(range(len(domains))):
            raise ValueError(f"Domain ids must be exactly 0..{len(domains) - 1}, got {ids}")
        names = [d.name for d in domains]
        if len(set(names)) != len(names):
            raise ValueError(f"Domain names must be unique, got {names}")
        self.domains = tuple(sorted(domains, key=lambda d: d.id))
        self._by_name = {d.name: d for d in self.domains}

    def __len__(self) -> int:
        return len(self.domains)

    def __iter__(self):
        return iter(self.domains)

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DomainRegistry) and self.domains == other.domains

    def __repr__(self) -> str:
        return f"DomainRegistry({[d.name for d in self.domains]})"

    def __getitem__(self, name: str) -> Domain:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown domain {name!r}; known domains: {self.names}") from None

    @property
    def names(self) -> list[str]:
        return [d.name for d in self.domains]

    def warm(self) -> list[Domain]:
        """Domains used for pretraining."""
        return [d for d in self.domains if not d.cold_start]

    def cold(self) -> list[Domain]:
        """Domains held out for cold-start fine-tuning."""
        return [d for d in self.domains if d.cold_start]

    def to_json(self) -> list[dict]:
        return [dataclasses.asdict(d) for d in self.domains]

    @classmethod
    def from_json(cls, data: Iterable[Mapping[str, Any]]) -> DomainRegistry:
        return cls([Domain(**d) for d in data])


def default_features(text_dim: int = DEFAULT_TEXT_DIM) -> list[Feature]:
    """The features of tfsr's unified search + recommendation samples."""
    return [
        Feature("domain", "string", "context", description="domain name from the DomainRegistry"),
        Feature("user_id", "string", "user", aspect="id", description="user identifier"),
        Feature(
            "query_id",
            "string",
            "query",
            aspect="id",
            default="",
            description="normalised query string used as a query id; empty in rec domains",
        ),
        Feature(
            "query_text",
            "string",
            "query",
            aspect="text",
            default="",
            description="query text as typed; empty in rec domains",
        ),
        Feature("item_id", "string", "item", aspect="id", description="item identifier"),
        Feature("item_title", "string", "item", aspect="text", default="", description="item title"),
        Feature(
            "item_genres",
            "string",
            "item",
            aspect="sparse",
            varlen=True,
            description="item categories (multi-valued)",
        ),
        Feature(
            "item_decade",
            "string",
            "item",
            aspect="sparse",
            default="",
            description="item release decade bucket, e.g. '1990s'",
        ),
        Feature(
            "query_text_embedding",
            "float32",
            "query",
            role="derived",
            aspect="text",
            shape=(text_dim,),
            source="query_text",
            description="frozen text encoder embedding of query_text (zeros when empty)",
        ),
        Feature(
            "item_title_embedding",
            "float32",
            "item",
            role="derived",
            aspect="text",
            shape=(text_dim,),
            source="item_title",
            description="frozen text encoder embedding of item_title",
        ),
        Feature("label", "int64", "context", role="label", description="1 = click / positive, 0 = not"),
        Feature(
            "timestamp",
            "int64",
            "context",
            role="meta",
            default=0,
            description="event time, seconds since the epoch",
        ),
        Feature(
            "is_cold_item",
            "int64",
            "item",
            role="meta",
            default=0,
            description="1 when the item has (almost) no training interactions",
        ),
    ]


def vocab_features(features: Iterable[Feature]) -> list[Feature]:
    """The features with a vocabulary (built by the Beam job): raw ids and sparse values."""
    return [f for f in features if f.role == "raw" and f.aspect in ("id", "sparse")]


def text_embeddings(features: Iterable[Feature]) -> dict[str, str]:
    """Text feature -> the derived feature holding its frozen-encoder embedding (its ``source``)."""
    return {f.source: f.name for f in features if f.role == "derived" and f.aspect == "text"}


class FeatureSpec:
    """The feature specification of a dataset and of the models trained on it.

    Args:
      features: the features; names must be unique.
      domains: the domain registry; the `domain` feature takes its names. There is no default: a
        dataset's registry comes with it (MovieLens: :data:`tfsr.datasets.movielens.MOVIELENS_DOMAINS`).
      text_dim: width of the frozen text encoder's embeddings.

    Example:
      >>> spec = FeatureSpec.default(domains)
      >>> example = spec.to_example(record)       # python dict -> tf.train.Example
      >>> parsed = tf.io.parse_example(serialized, spec.parse_spec())
    """

    def __init__(
        self,
        features: Sequence[Feature] | None = None,
        domains: DomainRegistry | None = None,
        text_dim: int = DEFAULT_TEXT_DIM,
    ):
        if text_dim <= 0:
            raise ValueError(f"text_dim must be positive, got {text_dim}")
        features = list(features) if features is not None else default_features(text_dim)
        names = [f.name for f in features]
        if len(set(names)) != len(names):
            raise ValueError(f"Feature names must be unique, got {names}")
        for f in features:
            if f.source is not None and f.source not in names:
                raise ValueError(f"Feature {f.name!r} is derived from unknown feature {f.source!r}")
        if "domain" not in names or "label" not in names:
            raise ValueError("A FeatureSpec needs a 'domain' and a 'label' feature")
        if not isinstance(domains, DomainRegistry):
            raise TypeError(f"A FeatureSpec needs a DomainRegistry of its domains, got {domains!r}")
        self.features = tuple(features)
        self.domains = domains
        self.text_dim = text_dim
        self._by_name = {f.name: f for f in self.features}

    @classmethod
    def default(cls, domains: DomainRegistry, text_dim: int = DEFAULT_TEXT_DIM) -> FeatureSpec:
        """tfsr's unified search + recommendation features (:func:`default_features`) over `domains`."""
        return cls(default_features(text_dim), domains, text_dim)

    def __getitem__(self, name: str) -> Feature:
        try:
            return self._by_name[name]
        except KeyError:
            raise KeyError(f"unknown feature {name!r}; known features: {list(self._by_name)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self._by_name

    def __eq__(self, other: object) -> bool:
        return (
            isinstance(other, FeatureSpec)
            and self.features == other.features
            and self.domains == other.domains
            and self.text_dim == other.text_dim
        )

    # ----------------------------------------------------------------- selections
    def select(
        self, roles: Iterable[str] | None = None, entity: str | None = None, aspect: str | None = None
    ) -> list[Feature]:
        """Features filtered by role, entity and aspect (None = any)."""
        roles = set(roles) if roles is not None else set(ROLES)
        return [
            f
            for f in self.features
            if f.role in roles
            and (entity is None or f.entity == entity)
            and (aspect is None or f.aspect == aspect)
        ]

    @property
    def raw_features(self) -> list[Feature]:
        """What a serving request carries."""
        return self.select(["raw"])

    @property
    def model_features(self) -> list[Feature]:
        """What the model's Keras inputs are: raw features whose aspect is not text, plus derived ones."""
        return [f for f in self.features if (f.role == "raw" and f.aspect != "text") or f.role == "derived"]

    @property
    def vocab_features(self) -> list[Feature]:
        """The features with a vocabulary (built by the Beam job): raw ids and sparse values."""
        return vocab_features(self.features)

    @property
    def text_embeddings(self) -> dict[str, str]:
        """Text feature -> the derived feature holding its frozen-encoder embedding (``Feature.source``)."""
        return text_embeddings(self.features)

    @property
    def sample_features(self) -> list[Feature]:
        """Everything a training sample (TFRecord) carries."""
        return list(self.features)

    # ----------------------------------------------------------------- validation
    def validate(
        self, record: Mapping[str, Any], roles: Iterable[str] = ("raw", "derived", "label", "meta")
    ) -> dict:
        """Checks a python record and returns it completed with defaults.

        Raises:
          RowError: naming the first field that is missing, of the wrong type or shape,
            not valid UTF-8, or (for `domain`) not a registered domain.
        """
        if not isinstance(record, Mapping):
            raise RowError.invalid(
                "<record>", f"expected a mapping of feature name to value, got {type(record).__name__}"
            )
        roles = set(roles)
        out = {}
        for f in self.features:
            if f.role not in roles:
                continue
            if f.name not in record or record[f.name] is None:
                if f.varlen:
                    out[f.name] = []
                    continue
                if f.default is None and f.role != "derived":
                    raise RowError.invalid(f.name, "required feature is missing")
                if f.role == "derived":
                    raise RowError.invalid(
                        f.name, f"derived feature is missing (compute it from '{f.source}')"
                    )
                out[f.name] = f.default
                continue
            out[f.name] = _check_value(f, record[f.name])
        if "domain" in out and out["domain"] not in self.domains:
            raise RowError.invalid("domain", f"unknown domain {out['domain']!r}; known: {self.domains.names}")
        if "label" in out and out["label"] not in (0, 1):
            raise RowError.invalid("label", f"label must be 0 or 1, got {out['label']!r}")
        return out

    # ----------------------------------------------------------------- tf.train.Example
    def to_example(
        self, record: Mapping[str, Any], roles: Iterable[str] = ("raw", "derived", "label", "meta")
    ):
        """Validates a python record and encodes it as a `tf.train.Example`."""
        import tensorflow as tf

        values = self.validate(record, roles)
        feature = {}
        for name, value in values.items():
            f = self._by_name[name]
            seq = list(value) if (f.varlen or f.shape) else [value]
            if f.dtype == "string":
                feature[name] = tf.train.Feature(
                    bytes_list=tf.train.BytesList(value=[s.encode("utf-8") for s in seq])
                )
            elif f.dtype == "int64":
                feature[name] = tf.train.Feature(int64_list=tf.train.Int64List(value=seq))
            else:
                feature[name] = tf.train.Feature(float_list=tf.train.FloatList(value=seq))
        return tf.train.Example(features=tf.train.Features(feature=feature))

    def parse_spec(self, roles: Iterable[str] = ("raw", "derived", "label", "meta")) -> dict:
        """The `tf.io.parse_example` spec; varlen features parse to `tf.RaggedTensor`s."""
        import tensorflow as tf

        roles = set(roles)
        spec = {}
        for f in self.features:
            if f.role not in roles:
                continue
            dtype = _tf_dtype(f.dtype)
            if f.varlen:
                spec[f.name] = tf.io.RaggedFeature(dtype=dtype, row_splits_dtype=tf.int64)
            else:
                default = None if f.default is None else ([f.default] * f.size if f.shape else f.default)
                spec[f.name] = tf.io.FixedLenFeature(shape=f.shape, dtype=dtype, default_value=default)
        return spec

    def keras_inputs(self) -> dict:
        """One `tf.keras.Input` per model feature (batch dimension first)."""
        import tensorflow as tf

        return {
            f.name: tf.keras.Input(
                shape=(None,) if f.varlen else f.shape, dtype=_tf_dtype(f.dtype), name=f.name, ragged=f.varlen
            )
            for f in self.model_features
        }

    def serving_tensor_specs(self) -> dict:
        """`tf.TensorSpec`s of the named-tensor serving signature (raw features).

        Scalars are `[batch]`; varlen features are dense `[batch, max_len]` padded with "".
        """
        import tensorflow as tf

        return {
            f.name: tf.TensorSpec(
                shape=[None, None] if f.varlen else [None, *f.shape], dtype=_tf_dtype(f.dtype), name=f.name
            )
            for f in self.raw_features
        }

    # ----------------------------------------------------------------- persistence
    def to_json(self) -> dict:
        return {
            "schema_version": SCHEMA_VERSION,
            "text_dim": self.text_dim,
            "domains": self.domains.to_json(),
            "features": [f.to_json() for f in self.features],
        }

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> FeatureSpec:
        version = data.get("schema_version")
        if version != SCHEMA_VERSION:
            raise ValueError(
                f"unsupported feature spec schema_version {version!r}; this tfsr reads {SCHEMA_VERSION}"
            )
        return cls(
            [Feature.from_json(f) for f in data["features"]],
            DomainRegistry.from_json(data["domains"]),
            int(data["text_dim"]),
        )

    def dumps(self) -> str:
        return json.dumps(self.to_json(), indent=2, sort_keys=True)

    @classmethod
    def loads(cls, text: str) -> FeatureSpec:
        return cls.from_json(json.loads(text))


def dummy_batch(spec: FeatureSpec) -> dict:
    """A two-row batch of the model features (one sample with a query, one without), as tensors.

    Used to build a model's variables before restoring weights or tracing.
    """
    import tensorflow as tf

    search = next((d.name for d in spec.domains if d.kind == "search"), spec.domains.names[0])
    rec = next((d.name for d in spec.domains if d.kind == "rec"), spec.domains.names[0])
    batch = {}
    for f in spec.model_features:
        dtype = _tf_dtype(f.dtype)
        if f.name == "domain":
            batch[f.name] = tf.constant([search, rec])
        elif f.varlen:
            values = [["a"], []] if f.dtype == "string" else [[1], []]
            batch[f.name] = tf.ragged.constant(values, dtype=dtype, row_splits_dtype=tf.int64)
        elif f.shape:
            batch[f.name] = tf.concat([tf.ones([1, *f.shape], dtype), tf.zeros([1, *f.shape], dtype)], axis=0)
        elif f.dtype == "string":
            batch[f.name] = tf.constant(["a", ""])
        else:
            batch[f.name] = tf.constant([1, 0], dtype)
    return batch


def _tf_dtype(dtype: str):
    import tensorflow as tf

    return {"string": tf.string, "int64": tf.int64, "float32": tf.float32}[dtype]


def _check_scalar(f: Feature, value: Any) -> Any:
    if f.dtype == "string":
        if isinstance(value, bytes):
            try:
                value = value.decode("utf-8")
            except UnicodeDecodeError as err:
                raise RowError.invalid(
                    f.name, f"bytes are not valid UTF-8 ({err.reason} at byte {err.start})"
                ) from None
        if not isinstance(value, str):
            raise RowError.invalid(
                f.name, f"expected a string, got {type(value).__name__} {_short_repr(value)}"
            )
        try:  # e.g. a lone surrogate from a JSON "\ud800" escape is a str but has no UTF-8 encoding
            value.encode("utf-8")
        except UnicodeEncodeError as err:
            raise RowError.invalid(
                f.name, f"string is not encodable as UTF-8 ({err.reason} at {err.start})"
            ) from None
        if f.aspect in ("id", "sparse"):
            bad = FORBIDDEN_ID_CHARS.search(value)
            if bad:
                raise RowError.invalid(
                    f.name,
                    f"control character or line break U+{ord(bad.group()):04X} at {bad.start()} "
                    "(ids and sparse values are vocabulary lines)",
                )
        return value
    if f.dtype == "int64":
        # exact: an int (1.0, True, "1" are not), so every input format accepts the same spellings
        if isinstance(value, bool) or not isinstance(value, int):
            raise RowError.invalid(
                f.name, f"expected an integer, got {type(value).__name__} {_short_repr(value)}"
            )
        if not -(2**63) <= value < 2**63:
            raise RowError.invalid(f.name, f"integer {_short_repr(value)} does not fit in int64")
        return value
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise RowError.invalid(f.name, f"expected a number, got {type(value).__name__} {_short_repr(value)}")
    if not math.isfinite(value):
        raise RowError.invalid(f.name, f"expected a finite number, got {value}")
    return float(value)


def _short_repr(value: Any, limit: int = 40) -> str:
    """At most `limit` characters of repr(value); never fails (repr of a 5,000-digit int raises)."""
    if isinstance(value, int) and value.bit_length() > 256:
        return f"<integer of {value.bit_length()} bits>"
    return repr(value)[:limit]


def _check_value(f: Feature, value: Any) -> Any:
    if f.varlen or f.shape:
        # a list (tuple, array) only: a JSON object or a set would pass as its keys, in no fixed order
        if isinstance(value, str | bytes | Mapping | Set) or not isinstance(value, Sequence | Iterable):
            raise RowError.invalid(f.name, f"expected a list of {f.dtype}, got {type(value).__name__}")
        values = [_check_scalar(f, v) for v in value]
        if f.shape and len(values) != f.size:
            raise RowError.invalid(f.name, f"expected {f.size} values (shape {f.shape}), got {len(values)}")
        return values
    return _check_scalar(f, value)
