"""What the paper study runs (``benchmarks/paper_study.py``): its budgets and the names of its rows.

The main model, the baselines (and which of them run with every seed), the freeze splits of cold start, the
ablations of SRFoundation and the ``Budget`` sizes (``FULL``, ``QUICK``), shared by the runner, the statistics
(``study_stats``) and the report (``study_report``).
"""

from __future__ import annotations

import dataclasses

MAIN_MODEL = "srfoundation"
# the strongest simple models: run with every seed, fine-tuned for cold start, compared in the targets
SEEDED_BASELINES = ("deepfm", "dcn_v2")
BASELINES = ("shared_bottom", "mmoe", "ple", "star", *SEEDED_BASELINES)
DEFAULT_FREEZE = "L0+L1+L2_shared"  # every pretrained weight (`tfsr finetune`'s default)
FREEZE_SPLITS = {
    "none": [],
    "L0": ["L0"],
    "L0+L1": ["L0", "L1"],
    DEFAULT_FREEZE: ["L0", "L1", "L2_shared"],
}
COLD_MAIN = f"cold:{MAIN_MODEL}_finetuned_{DEFAULT_FREEZE}"
SEEDED_ABLATIONS = ("gating=mean",)  # run with every seed: the paper's headline ablation
ABLATIONS = {
    "no_text": {"use_text": False},
    "gating=mean": {"gating": "mean"},
    "gating=cls": {"gating": "cls"},
    "alignment=none": {"alignment": "none"},
    "alignment=mmd": {"alignment": "mmd"},
    # the L2 interactions (the main row has the default dot + cross)
    "interactions=none": {"interactions": []},
    "interactions=dot": {"interactions": ["dot"]},
    "interactions=cross": {"interactions": ["cross"]},
}


@dataclasses.dataclass
class Budget:
    """Sizes of one study; ``FULL`` fits 45 minutes on 2 CPU cores, ``QUICK`` is a smoke run."""

    text_encoder: str
    batch_size: int
    epochs: int
    max_steps: int | None
    ft_batch_size: int
    ft_epochs: int
    seeds: tuple[int, ...]
    patience: int = 1
    ft_patience: int = 5
    ablations: bool = True
    eval_max_batches: int | None = None


FULL = Budget(
    text_encoder="minilm",
    batch_size=512,
    epochs=4,
    max_steps=None,
    ft_batch_size=64,
    ft_epochs=15,
    seeds=(0, 1, 2),
)
QUICK = Budget(
    text_encoder="tiny",
    batch_size=256,
    epochs=1,
    max_steps=20,
    ft_batch_size=64,
    ft_epochs=2,
    seeds=(0,),
    eval_max_batches=2,
)


def budget_from_args(args) -> Budget:
    """FULL or QUICK (``--quick``) with ``--text_encoder``, ``--seeds`` and ``--epochs`` applied."""
    budget = dataclasses.replace(QUICK if args.quick else FULL)
    if args.text_encoder:
        budget.text_encoder = args.text_encoder
    if args.seeds:
        budget.seeds = tuple(range(args.seeds))
    if args.epochs:
        budget.epochs = args.epochs
    return budget
