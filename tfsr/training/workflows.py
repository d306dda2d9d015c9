"""The three stages as functions: pretrain, fine-tune for cold start, evaluate (what the CLI and the paper
study call).

* :func:`run_train` — build the model from ``config.model`` (a ``tfsr.models.ModelConfig`` dict), train it on
  the warm domains of ``pretrain_train``, save it to ``<output_dir>/model``.
* :func:`run_finetune` — load a pretrained model, ``add_domain`` the cold-start domain, ``freeze`` the chosen
  levels (default every pretrained weight: L0 + L1, the paper's best split, and the shared experts, so the
  warm domains' predictions stay exactly as they were), train on ``coldstart_finetune`` with the stage's own
  batch size and epochs, save it.

Both training stages select the model on a validation slice carved from the training period
(``pretrain_valid`` / ``coldstart_valid``): early stopping, best-epoch restore, then per-domain Platt
calibration of the trained domains (:func:`validation_metrics`, :func:`calibrate`).
* :func:`run_evaluate` — predict the evaluation splits, compute :mod:`tfsr.evaluation`'s metrics, and write
  :mod:`tfsr.report`'s JSON + markdown + plots.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import functools
import json
import logging
import pathlib
import time
from collections.abc import Iterable, Sequence
from typing import Any

import tfsr  # noqa: F401  (already imported as the parent package, which selects Keras 2 first)
from tfsr import evaluation, layout, report
from tfsr.training import distributed
from tfsr.training.config import REFIT_DIR, TrainConfig
from tfsr.training.loop import Trainer, Validation, load_histories, set_seeds

import numpy as np
import tensorflow as tf

log = logging.getLogger("tfsr.training")

MODEL_DIR = "model"
REPORT_DIR = "report"


# --------------------------------------------------------------------------- helpers
def load_vocabularies(samples_dir: str | pathlib.Path) -> dict[str, list[str]]:
    """Every ``vocab/<feature>.txt`` of a samples directory as {feature: values}."""
    vocab_dir = pathlib.Path(samples_dir) / layout.VOCAB_DIR
    return {p.stem: layout.read_vocab(samples_dir, p.stem) for p in sorted(vocab_dir.glob("*.txt"))}


def resolve_model_path(path: str | pathlib.Path) -> pathlib.Path:
    """A saved model directory, given it or a run directory holding it under ``model/``."""
    path = pathlib.Path(path)
    if (path / MODEL_DIR).is_dir():
        return path / MODEL_DIR
    if not path.exists():
        raise FileNotFoundError(f"no saved model at {path}")
    return path


def model_domains(model, spec=None) -> list[str]:
    """Names of the domains a model has towers for (its registry)."""
    registry = getattr(model, "domain_registry", None)
    if registry is not None:
        return list(registry.names)
    if spec is None:
        raise ValueError("cannot tell the model's domains: it has no domain_registry")
    return [d.name for d in spec.domains.warm()]


def training_registry(spec, domains: Sequence[str]):
    """The registry a new model is built with: the domains it trains on, in the spec's order, ids 0..K-1.

    Pretraining on the warm domains leaves the cold-start domain out, to be added by ``add_domain``;
    a single-domain model knows only its domain.
    """
    from tfsr.features import Domain, DomainRegistry

    unknown = [d for d in domains if d not in spec.domains]
    if unknown:
        raise ValueError(f"unknown domains {unknown}; the samples know {spec.domains.names}")
    chosen = [d for d in spec.domains if d.name in set(domains)]
    return DomainRegistry([Domain(d.name, d.kind, i, d.cold_start) for i, d in enumerate(chosen)])


def make_dataset(
    samples_dir,
    split: str | Sequence[str],
    spec,
    batch_size: int,
    *,
    shuffle: bool,
    seed: int = 0,
    domains: Sequence[str] | None = None,
    domain_weights=None,
) -> tf.data.Dataset:
    """A split (or several, read as one) of a samples directory as model-ready batches: text keys looked up
    in its tables when the samples carry keys (:func:`tfsr.text.lookup.samples_text_lookup`, shared by the
    run's datasets)."""
    from tfsr import data
    from tfsr.text.lookup import samples_text_lookup

    kwargs: dict[str, Any] = {"shuffle": shuffle, "seed": seed, "domains": list(domains) if domains else None}
    if domain_weights:
        kwargs["domain_weights"] = domain_weights
    if isinstance(split, str):
        files = layout.split_pattern(samples_dir, split)
    else:  # several splits: their files, globbed here (make_dataset takes one pattern or a list of files)
        files = [f for s in split for f in tf.io.gfile.glob(layout.split_pattern(samples_dir, s))]
    return data.make_dataset(
        files,
        spec,
        batch_size,
        text_lookup=samples_text_lookup(samples_dir, spec),
        **kwargs,
    )


def _optimizer(cfg: TrainConfig, model_config: dict | None):
    lr = cfg.learning_rate
    if lr is None and model_config:
        lr = model_config.get("learning_rate")
    kwargs = {"learning_rate": float(lr or 1e-3)}
    if cfg.clipnorm:
        kwargs["clipnorm"] = float(cfg.clipnorm)
    return tf.keras.optimizers.Adam(**kwargs)


def _fit(
    model,
    cfg: TrainConfig,
    spec,
    stage: str,
    domains: Sequence[str],
    model_config: dict | None,
    strategy=None,
    splits: Sequence[str] | None = None,
):
    """Trains `model` on `splits` (default ``cfg.split``) with the run's callbacks and validation."""
    out = pathlib.Path(cfg.output_dir)
    strategy = strategy or tf.distribute.get_strategy()
    with strategy.scope():
        optimizer = _optimizer(cfg, model_config)
    trainer = Trainer(
        model,
        optimizer,
        out,
        stage=stage,
        seed=cfg.seed,
        log_every=cfg.log_every,
        checkpoint_every=cfg.checkpoint_every,
        keep_checkpoints=cfg.keep_checkpoints,
        verbose=cfg.verbose,
        strategy=strategy,
        auto_shard=cfg.auto_shard,
    )

    from tfsr.training import retrieval

    if retrieval.is_retrieval(model):
        # a retrieval model trains on the clicks (with their items' sampling probabilities and catalogue
        # negatives) and is selected on its Recall@100 over the whole catalogue
        if cfg.domain_weights:
            raise ValueError("domain_weights are not supported for retrieval models; use domain_loss_weights")
        read = functools.partial(
            retrieval.clicks_dataset,
            probability=retrieval.candidate_probability_table(cfg.samples_dir, cfg.split, spec, domains),
            negatives=model.catalogue_negatives,
        )
        score, monitor = retrieval.validation_metrics, retrieval.MONITOR
    else:
        read = functools.partial(make_dataset, domain_weights=cfg.domain_weights)
        score, monitor = validation_metrics, cfg.monitor

    def dataset_fn(epoch: int):
        return read(
            cfg.samples_dir,
            list(splits) if splits else cfg.split,
            spec,
            cfg.batch_size,
            shuffle=True,
            seed=cfg.seed + epoch,
            domains=domains,
        )

    validation = None
    if has_split(cfg.samples_dir, cfg.validation_split, domains):
        validation = Validation(
            lambda: score(model, cfg.samples_dir, spec, cfg.validation_split, domains),
            monitor=monitor,
            patience=cfg.patience,
        )
    elif cfg.validation_split:
        log.warning(
            "%s: no rows of %s in the %r split of %s: no early stopping, best-epoch restore or calibration "
            "(the last epoch is kept)",
            stage,
            ", ".join(domains),
            cfg.validation_split,
            cfg.samples_dir,
        )
    started = time.perf_counter()
    history = trainer.fit(dataset_fn, epochs=cfg.epochs, max_steps=cfg.max_steps, validation=validation)
    log.info("%s: %d steps in %.1f s", stage, int(trainer.step.numpy()), time.perf_counter() - started)
    return trainer, history


def has_split(samples_dir, split: str | None, domains: Sequence[str] | None = None) -> bool:
    """Whether a samples directory has rows in `split` (of `domains`, when given), by its manifest's counts
    (by its files when the manifest has none)."""
    if not split or not list(pathlib.Path(samples_dir, split).glob(f"part-*{layout.TFRECORD_SUFFIX}")):
        return False
    try:
        per_domain = layout.read_manifest(samples_dir).get("counts", {}).get(split)
    except FileNotFoundError:
        per_domain = None
    if per_domain is None:
        return True
    return any(entry.get("samples", 0) > 0 for d, entry in per_domain.items() if not domains or d in domains)


def validation_metrics(model, samples_dir, spec, split: str, domains: Sequence[str]) -> dict[str, float]:
    """The model on a validation split: per-domain AUC and log loss and their means over the domains.

    ``val_auc`` averages the domains with both classes in the slice, ``val_loss`` every domain; each domain
    counts once whatever its size, so a small domain is not drowned by a large one.
    """

    preds = predict_splits(model, samples_dir, spec, [split], domains=domains)
    aucs, losses, metrics = [], [], {}
    for name in domains:
        mask = preds["domain"].astype(str) == name
        labels = preds["label"][mask]
        if labels.size == 0:
            continue
        losses.append(metrics.setdefault(f"val_{name}_loss", evaluation.log_loss(labels, preds["ctr"][mask])))
        if 0 < labels.sum() < labels.size:
            aucs.append(metrics.setdefault(f"val_{name}_auc", evaluation.auc(labels, preds["ctr"][mask])))
    if not losses:
        raise ValueError(f"the validation split {split!r} has no rows of the domains {list(domains)}")
    metrics["val_loss"] = float(np.mean(losses))
    metrics["val_auc"] = float(np.mean(aucs)) if aucs else 0.5
    return metrics


def calibrate(model, samples_dir, spec, split: str, domains: Sequence[str]) -> dict[str, dict[str, float]]:
    """Fits each domain's Platt scaling on a validation split (``DomainCalibration``); returns
    ``{domain: {"scale", "shift", "rows", "logloss_before", "logloss_after"}}``.

    The calibration map is strictly increasing (AUC and GAUC do not change); domains not named keep
    their calibration, so fine-tuning a new domain leaves the warm domains' CTRs as they were.
    """
    from tfsr.layers.calibration import fit_platt

    layer = getattr(model, "calibration", None)
    if layer is None:
        return {}
    preds = predict_splits(model, samples_dir, spec, [split], domains=domains)
    out = {}
    for name in domains:
        mask = preds["domain"].astype(str) == name
        if not mask.any():
            continue
        domain_id = model.domain_registry[name].id
        old_scale, old_shift = layer.domain(domain_id)
        raw = (preds["logit"][mask] - old_shift) / old_scale  # undo the current calibration
        scale, shift = fit_platt(raw, preds["label"][mask])
        layer.set_domain(domain_id, scale, shift)
        after = 1.0 / (1.0 + np.exp(-(scale * raw + shift)))
        out[name] = {
            "scale": scale,
            "shift": shift,
            "rows": int(mask.sum()),
            "logloss_before": evaluation.log_loss(preds["label"][mask], preds["ctr"][mask]),
            "logloss_after": evaluation.log_loss(preds["label"][mask], after),
        }
        log.info(
            "calibrated %s on %d %s rows: scale %.3f shift %.3f, log loss %.4f -> %.4f",
            name,
            out[name]["rows"],
            split,
            scale,
            shift,
            out[name]["logloss_before"],
            out[name]["logloss_after"],
        )
    return out


def _save(model, cfg: TrainConfig, strategy=None) -> pathlib.Path:
    """Saves the final model; under a multi-worker strategy every worker saves (it may be collective) but
    only the chief to ``<output_dir>/model``, the others to a temp dir they delete."""
    from tfsr.models import save_model

    path = pathlib.Path(cfg.output_dir) / MODEL_DIR
    target = distributed.write_dir(path, strategy)
    save_model(model, str(target))
    distributed.remove_temp(target, strategy)
    if target == path:
        log.info("saved the model to %s", path)
    return path


# --------------------------------------------------------------------------- stages
def _refit(selected, build, cfg: TrainConfig, spec, stage: str, domains, model_config, strategy, epochs: int):
    """A fresh model (`build()`, seeded like the run) trained on the training and validation splits for the
    chosen `epochs`, under ``<output_dir>/refit/``, with the selected model's calibration. Returns
    (model, trainer, history)."""
    refit_cfg = dataclasses.replace(
        cfg,
        output_dir=str(pathlib.Path(cfg.output_dir) / REFIT_DIR),
        validation_split=None,
        epochs=epochs,
        max_steps=None,
    )
    set_seeds(cfg.seed)
    with strategy.scope():
        model = build()
    splits = (cfg.split, cfg.validation_split)
    log.info("%s: refitting a fresh model on %s for %d epoch(s)", stage, " + ".join(splits), epochs)
    trainer, history = _fit(model, refit_cfg, spec, stage, domains, model_config, strategy, splits=splits)
    calibration = getattr(selected, "calibration", None)
    if calibration is not None:
        model.calibration.set_weights(calibration.get_weights())
    return model, trainer, history


def _run_stage(model, cfg: TrainConfig, spec, stage: str, domains, strategy, build) -> dict[str, Any]:
    """Fits one stage, saves the model, and (chief only) writes the config and the optional report.

    Pretraining falls back to the model config's learning rate; fine-tuning has its own default. With
    ``cfg.refit``, `build` makes the fresh model that is refitted on the training and validation rows.
    """
    from tfsr.training.retrieval import is_retrieval

    if cfg.refit and is_retrieval(model):
        raise ValueError(
            "refit is for ranking models (a retrieval model is selected on its validation clicks)"
        )
    cfg.model = model.config.to_json()
    model_config = cfg.model if stage == "train" else None
    if distributed.is_chief():
        cfg.save(pathlib.Path(cfg.output_dir) / "config.json")
    trainer, history = _fit(model, cfg, spec, stage, domains, model_config, strategy)

    calibration = (
        calibrate(model, cfg.samples_dir, spec, cfg.validation_split, domains)
        if cfg.calibrate
        and not is_retrieval(model)  # no CTR to calibrate
        and has_split(cfg.samples_dir, cfg.validation_split, domains)
        else {}
    )
    selection = {"best": trainer.best, "calibration": calibration}
    refit = None
    if cfg.refit and trainer.best:
        epochs = int(trainer.best["epoch"])
        model, refit_trainer, refit_history = _refit(
            model, build, cfg, spec, stage, domains, model_config, strategy, epochs
        )
        refit = {"epochs": epochs, "splits": [cfg.split, cfg.validation_split], "history": refit_history}
        refit["steps"] = int(refit_trainer.step.numpy())
        selection["refit"] = {k: v for k, v in refit.items() if k != "history"}
    elif cfg.refit:
        log.warning(
            "%s: no validation ran, so there is nothing to refit for: the trained model is kept", stage
        )
    if distributed.is_chief() and (trainer.best or calibration):
        (pathlib.Path(cfg.output_dir) / "selection.json").write_text(json.dumps(selection, indent=1) + "\n")
    result = {
        "model": model,
        "model_path": _save(model, cfg, strategy),
        "trainer": trainer,
        "history": history,
        "best": trainer.best,
        "calibration": calibration,
        "refit": refit,
    }
    if cfg.evaluate and distributed.is_chief():
        result["report"] = run_evaluate(
            model,
            cfg.samples_dir,
            pathlib.Path(cfg.output_dir) / REPORT_DIR,
            batch_size=cfg.eval_batch_size,
            run_dir=cfg.output_dir,
        )
    return result


def run_train(cfg: TrainConfig) -> dict[str, Any]:
    """Pretrains on the warm domains. Returns {"model", "model_path", "trainer", "history", "report"?}."""
    from tfsr.models import ModelConfig, build_model

    cfg.validate()
    strategy = distributed.strategy_from_env()  # first: collective ops are configured at startup
    set_seeds(cfg.seed)
    spec = layout.read_feature_spec(cfg.samples_dir)
    domains = cfg.domains or [d.name for d in spec.domains.warm()]
    model_config = ModelConfig.from_json(cfg.model) if cfg.model else ModelConfig()
    if model_config.domains is None:
        model_config = model_config.with_registry(training_registry(spec, domains))
    vocabularies = load_vocabularies(cfg.samples_dir)
    with strategy.scope():
        model = build_model(model_config, spec, vocabularies)
        if cfg.pretrained:
            _init_from_pretrained(model, cfg)
    build = functools.partial(build_model, model_config, spec, vocabularies)
    return _run_stage(model, cfg, spec, "train", domains, strategy, build)


def _init_from_pretrained(model, cfg: TrainConfig) -> None:
    """A retrieval model trained with ``pretrained`` starts from that ranker's L0 encoders and context
    fusions (``RetrievalModel.init_from_ranker``) and freezes ``cfg.freeze``."""
    from tfsr.models import load_model
    from tfsr.training.retrieval import is_retrieval

    if not is_retrieval(model):
        raise ValueError("train --pretrained initialises retrieval models only; use finetune for rankers")
    copied = model.init_from_ranker(load_model(str(resolve_model_path(cfg.pretrained))))
    log.info("initialised %s from the ranker %s", ", ".join(copied), cfg.pretrained)
    if cfg.freeze:
        model.freeze(*cfg.freeze)


def prepare_finetune_model(
    pretrained, spec, domains: Sequence[str], freeze: Iterable[str], init_from: str | None = None
):
    """Loads a pretrained model (path or model), adds the cold-start domains (initialised from domain
    `init_from` when given) and freezes the given levels."""
    from tfsr.models import load_model

    model = (
        load_model(str(resolve_model_path(pretrained)))
        if isinstance(pretrained, str | pathlib.Path)
        else pretrained
    )
    known = set(model_domains(model, spec))
    for name in domains:
        if name not in known:
            model.add_domain(spec.domains[name], init_from=init_from)
    freeze = list(freeze)
    if freeze:
        model.freeze(*freeze)
    shared = [
        level for level in ("L0", "L1", "L2_shared") if level not in freeze and model.level_layers(level)
    ]
    if shared:
        log.warning(
            "fine-tuning with %s trainable: the new domain's data will change weights that the pretrained "
            "domains share, so their predictions will change too (freeze L0 L1 L2_shared to keep them)",
            "+".join(shared),
        )
    return model


def run_finetune(cfg: TrainConfig) -> dict[str, Any]:
    """Fine-tunes a pretrained model on the cold-start slice with the chosen levels frozen."""
    cfg.validate()
    if not cfg.pretrained:
        raise ValueError("finetune needs --pretrained (a saved model or a pretraining run directory)")
    strategy = distributed.strategy_from_env()
    set_seeds(cfg.seed)
    spec = layout.read_feature_spec(cfg.samples_dir)
    domains = cfg.domains or [d.name for d in spec.domains.cold()]
    if not domains:
        raise ValueError("the feature spec has no cold-start domain; pass --domains")
    build = functools.partial(
        prepare_finetune_model, cfg.pretrained, spec, domains, cfg.freeze, cfg.init_from
    )
    with strategy.scope():
        model = build()
    return _run_stage(model, cfg, spec, "finetune", domains, strategy, build)


def default_eval_splits(model, spec) -> list[str]:
    """``pretrain_eval``, plus ``coldstart_eval`` when the model has a tower for a cold-start domain."""
    known = set(model_domains(model, spec))
    splits = [layout.PRETRAIN_EVAL]
    if any(d.name in known for d in spec.domains.cold()):
        splits.append(layout.COLDSTART_EVAL)
    return splits


def predict_splits(
    model,
    samples_dir,
    spec,
    splits: Sequence[str],
    batch_size: int = 4096,
    domains: Sequence[str] | None = None,
    max_batches: int | None = None,
) -> dict:
    """Predictions over several splits, concatenated (only the model's own domains by default)."""

    domains = list(domains) if domains else model_domains(model, spec)
    parts = []
    for split in splits:
        ds = make_dataset(samples_dir, split, spec, batch_size, shuffle=False, domains=domains)
        parts.append(evaluation.predict_dataset(model, ds, max_batches=max_batches))
    keys = set.intersection(*(set(p) for p in parts))
    return {k: np.concatenate([p[k] for p in parts], axis=0) for k in keys}


def run_evaluate(
    model,
    samples_dir,
    output_dir=None,
    splits: Sequence[str] | None = None,
    batch_size: int = 4096,
    run_dir=None,
    name: str | None = None,
    max_batches: int | None = None,
    plots: bool = True,
) -> dict[str, Any]:
    """Evaluates a model (object, saved-model path or run directory) and writes the report.

    Returns the report dict (also written to ``output_dir`` as report.json / report.md / PNGs when given).
    """
    from tfsr.models import load_model
    from tfsr.training import retrieval

    model_ref = None
    if isinstance(model, str | pathlib.Path):
        model_ref = str(model)
        if run_dir is None and (pathlib.Path(model) / MODEL_DIR).is_dir():
            run_dir = model
        model = load_model(str(resolve_model_path(model)))
    if retrieval.is_retrieval(model):
        return retrieval.run_evaluate(
            model, samples_dir, output_dir, splits, name=name or (model_ref and pathlib.Path(model_ref).name)
        )
    spec = layout.read_feature_spec(samples_dir)
    splits = list(splits) if splits else default_eval_splits(model, spec)
    started = time.perf_counter()
    preds = predict_splits(model, samples_dir, spec, splits, batch_size, max_batches=max_batches)
    rep = evaluation.evaluate_predictions(preds, spec)
    rep["meta"] = {
        "model": name or model_ref or getattr(model, "name", "model"),
        "model_type": (getattr(getattr(model, "config", None), "model_type", None)),
        "samples_dir": str(samples_dir),
        "splits": ", ".join(splits),
        "rows": int(preds["label"].size),
        "eval_seconds": round(time.perf_counter() - started, 2),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "tfsr_version": tfsr.__version__,
    }
    if run_dir is not None:
        rep["history"] = load_histories(run_dir)
    if output_dir is not None:
        report.write_report(rep, output_dir, title=f"Evaluation of {rep['meta']['model']}", plots=plots)
        log.info("wrote the report to %s", output_dir)
    return rep
