"""Training configuration: one YAML file describes a whole staged run.

Why a dataclass tree instead of a free dict: a typo in a YAML key must fail before an
hour of training, not be silently ignored, so every key is checked against the fields
here. The resolved configuration is stored next to the checkpoints, so a run can be
resumed (and audited) from its folder alone.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from model.config import DEFAULT_BANDS
from pipeline.catalog_io import check_keys, read_catalog_yaml
from pipeline.errors import CatalogError
from pipeline.targets import load_targets

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def stage0_classes() -> tuple[str, ...]:
    """Classes of a new stage-0 segmentation network: "other", then the targets of
    ``catalogs/targets.yaml`` by their ``class_id`` (a trained network keeps its own list)."""
    targets = sorted(load_targets().values(), key=lambda t: t.class_id)
    return ("other", *(t.name for t in targets))


@dataclass(frozen=True)
class BandDropout:
    """With probability ``prob`` the sample loses ``bands`` (as a sensor without them:
    zero-filled and flagged in the evidence, unknown to the APG)."""

    bands: tuple[str, ...]
    prob: float


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation imitating what differs between sensors, dates and places.

    Geometry: flips and 90-degree rotations keep the pixel grid. Radiometry (applied to
    the crop and to its scene's pixel sample alike, so the scene-level index statistics
    follow): each band scaled by ``1 + N(0, gain_std)`` and shifted by
    ``N(0, offset_std)`` (calibration); with ``haze_prob``, haze of depth
    ``U(0, haze_max)``: ``x (1 - h p_b) + h p_b * 0.3`` with ``haze_profile`` weights
    ``p_b`` per band (path radiance falls with wavelength). Resolution: with
    ``resolution_prob`` the crop is averaged over blocks of one of ``resolution_factors``
    pixels and expanded back (a coarser sensor's pixels). Band dropout: see
    :class:`BandDropout`."""

    flips: bool = True
    rot90: bool = True
    gain_std: float = 0.05
    offset_std: float = 0.01
    haze_prob: float = 0.0
    haze_max: float = 0.1
    haze_profile: dict[str, float] = field(default_factory=dict)
    resolution_prob: float = 0.0
    resolution_factors: tuple[int, ...] = (2, 3)
    band_dropout: tuple[BandDropout, ...] = ()


@dataclass(frozen=True)
class StageConfig:
    """One stage's optimisation settings. ``llm`` (stage 1): 'lora' trains only the
    LoRA adapters (the paper, with a pretrained Qwen); 'full' trains the whole LM, the
    substitute for language pre-training when the tiny LM starts from random weights."""

    epochs: int = 1
    batch_size: int = 4
    accumulate: int = 1
    lr_vision: float = 1e-4
    lr_llm: float = 1e-5
    # Mask branch (MSAM decoder projection, TCP, SAM decoder); None = lr_vision.
    lr_decoder: float | None = None
    weight_decay: float = 1e-5
    warmup_steps: int = 10
    max_steps_per_epoch: int | None = None
    llm: str = "lora"
    # Samples drawn per epoch (places weigh equally, see model.training.data); None: one
    # per SPIE sample (stages 1, 2) or per patch (stage 0), in a shuffled order.
    samples_per_epoch: int | None = None
    # Stage 2: backpropagate the text loss through the LM into the encoder (the paper)
    # or run the LM without gradients (its loss then only reported; ~3x cheaper steps).
    text_grad: bool = True
    # Stages 1 and 2: repeat each target's samples up to the most frequent target's count
    # (model.training.data.balance_targets), so the language side learns the rare targets.
    balance_targets: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """A staged run: data, model, stages, loss weights and where to write."""

    spie: str = "out/spie"
    # Data-set catalogs (names or paths) the SPIE store must hold; a run first builds the
    # missing ones (the builder adds nothing twice). None: use the store as it is.
    datasets: tuple[str, ...] | None = None
    out: str = "out/train/tiny"
    model: str = "tiny"
    bands: tuple[str, ...] = DEFAULT_BANDS
    input_size: int = 128
    subsets: tuple[str, ...] | None = None
    # Train on this SPIE split only (None: every split; leave-one-scene-out evaluation
    # holds whole scenes out instead of blocks, model/training/loso.py).
    split: str | None = None
    # Places (data-set catalogs' ``place``) whose samples this run must not see: the
    # held-out place of a leave-one-scene-out fold.
    exclude_places: tuple[str, ...] = ()
    # Stages 1 and 2 train on these targets' samples only (None: every target); see
    # model.training.stages.per_target_config.
    targets: tuple[str, ...] | None = None
    # The SPEX checkpoint stage 2 starts from (None: this run's own stage-1 checkpoint).
    init_from: str | None = None
    seed: int = 0
    threads: int = 1
    response_tokens: int | None = 32
    loss_weights: tuple[float, float, float] = (1.0, 2.0, 1.0)
    # Class-balanced mask losses (model.training.data.balanced_weight; stage 0's
    # partial-label CE per allowed-class pattern): positives and negatives weigh the same
    # whatever share of them a data set happens to label.
    balance_classes: bool = False
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stages: tuple[int, ...] = (0, 1, 2)
    stage0: StageConfig = field(default_factory=lambda: StageConfig(lr_vision=1e-3))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(llm="full", lr_llm=1e-3))
    stage2: StageConfig = field(default_factory=StageConfig)

    def stage(self, n: int) -> StageConfig:
        return {0: self.stage0, 1: self.stage1, 2: self.stage2}[n]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, data: Any, where: str) -> Any:
    check_keys(data, where, allowed={f.name for f in fields(cls)})
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "augment":
            value = _build(AugmentConfig, value or {}, f"{where}.augment")
        elif key == "band_dropout":
            value = tuple(
                _build(BandDropout, dict(v), f"{where}.band_dropout[{i}]")
                for i, v in enumerate(value or [])
            )
        elif key == "haze_profile":
            value = {str(k): float(v) for k, v in (value or {}).items()}
        elif key.startswith("stage") and key != "stages":
            value = _build(StageConfig, value or {}, f"{where}.{key}")
        elif isinstance(value, list):
            value = tuple(value)
        kwargs[key] = value
    return cls(**kwargs)


def config_from_dict(data: dict[str, Any], **overrides: Any) -> TrainConfig:
    """Validate a parsed YAML mapping; ``overrides`` replace top-level fields."""
    cfg = _build(TrainConfig, dict(data), "training config")
    if cfg.model not in ("tiny", "paper"):
        raise CatalogError(f"model must be 'tiny' or 'paper', got {cfg.model!r}")
    for n in cfg.stages:
        if n not in (0, 1, 2):
            raise CatalogError(f"stages are 0, 1 and 2, got {n}")
    if cfg.stage1.llm not in ("lora", "full"):
        raise CatalogError(f"stage1.llm must be 'lora' or 'full', got {cfg.stage1.llm!r}")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a training YAML (a bare name means ``model/training/configs/<name>.yaml``)."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = CONFIG_DIR / f"{p}.yaml"
    return config_from_dict(read_catalog_yaml(p, "training"), **overrides)
