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

import yaml

CONFIG_DIR = Path(__file__).resolve().parent / "configs"

#: Classes of the stage-0 segmentation network: "other" plus the three targets.
CLASSES: tuple[str, ...] = ("other", "vegetation", "water", "building")


@dataclass(frozen=True)
class AugmentConfig:
    """Augmentation suited to multispectral patches. Flips and 90-degree rotations keep
    the pixel grid (no resampling of reflectances); the radiometric jitter scales each
    band by ``1 + N(0, gain_std)`` and shifts it by ``N(0, offset_std)``, which mimics
    calibration and atmosphere differences between sensors and dates."""

    flips: bool = True
    rot90: bool = True
    gain_std: float = 0.05
    offset_std: float = 0.01


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
    # Stages 1 and 2: repeat each target's samples up to the most frequent target's count
    # (model.training.data.text_rows), so the language side learns the rare targets too.
    balance_targets: bool = False


@dataclass(frozen=True)
class TrainConfig:
    """A staged run: data, model, stages, loss weights and where to write."""

    spie: str = "out/spie"
    out: str = "out/train/tiny"
    model: str = "tiny"
    bands: tuple[str, ...] = ("B", "G", "R", "N", "S1")
    input_size: int = 128
    subsets: tuple[str, ...] | None = None
    # Stages 1 and 2 train on these targets' samples only (None: every target); see
    # model.training.stages.per_target_config.
    targets: tuple[str, ...] | None = None
    # The SPEX checkpoint stage 2 starts from (None: this run's own stage-1 checkpoint).
    init_from: str | None = None
    # The splits stages 1 and 2 train on (model.training.data.text_rows): a
    # leave-one-scene-out run may take every split of the other scenes.
    text_splits: tuple[str, ...] = ("train",)
    seed: int = 0
    threads: int = 1
    response_tokens: int | None = 32
    loss_weights: tuple[float, float, float] = (1.0, 2.0, 1.0)
    augment: AugmentConfig = field(default_factory=AugmentConfig)
    stages: tuple[int, ...] = (0, 1, 2)
    stage0: StageConfig = field(default_factory=lambda: StageConfig(lr_vision=1e-3))
    stage1: StageConfig = field(default_factory=lambda: StageConfig(llm="full", lr_llm=1e-3))
    stage2: StageConfig = field(default_factory=StageConfig)

    def stage(self, n: int) -> StageConfig:
        return {0: self.stage0, 1: self.stage1, 2: self.stage2}[n]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _build(cls: type, data: dict[str, Any], where: str) -> Any:
    known = {f.name: f for f in fields(cls)}
    unknown = set(data) - set(known)
    if unknown:
        raise ValueError(f"{where}: unknown keys {sorted(unknown)}; known {sorted(known)}")
    kwargs: dict[str, Any] = {}
    for key, value in data.items():
        if key == "augment":
            value = _build(AugmentConfig, value or {}, f"{where}.augment")
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
        raise ValueError(f"model must be 'tiny' or 'paper', got {cfg.model!r}")
    for n in cfg.stages:
        if n not in (0, 1, 2):
            raise ValueError(f"stages are 0, 1 and 2, got {n}")
    if cfg.stage1.llm not in ("lora", "full"):
        raise ValueError(f"stage1.llm must be 'lora' or 'full', got {cfg.stage1.llm!r}")
    return replace(cfg, **{k: v for k, v in overrides.items() if v is not None})


def load_config(path: str | Path, **overrides: Any) -> TrainConfig:
    """Read a training YAML (a bare name means ``model/training/configs/<name>.yaml``)."""
    p = Path(path)
    if not p.suffix and not p.exists():
        p = CONFIG_DIR / f"{p}.yaml"
    data = yaml.safe_load(p.read_text(encoding="utf-8")) or {}
    return config_from_dict(data, **overrides)
