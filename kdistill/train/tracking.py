"""Experiment tracking, one switch: `train.tracker: [jsonl, tensorboard, aim, wandb]` (jsonl always on).

    trackers = open_trackers(cfg, output_dir)      # on the main process only
    trackers.log(row, step)                        # every numeric field of a metrics row
    trackers.close()

`metrics.jsonl` is always written by the loop; the others receive the same numeric series under the
same names (`loss`, each loss term, `lr`, `grad_norm`, `tokens_per_s`, `weight/<term>`,
`temperature/<term>`, held-out `eval_*`). TensorBoard writes event files to OUTPUT_DIR/tensorboard/
through `torch.utils.tensorboard` (package `tensorboard`); Aim writes a repo in OUTPUT_DIR/aim (`aim up
--repo OUTPUT_DIR/aim` shows it, seed 002's monitor); W&B runs offline unless WANDB_MODE says otherwise
(files in OUTPUT_DIR/wandb). Each is an optional extra: a missing package is a ConfigError naming it.
"""
from __future__ import annotations

import math
from pathlib import Path

from kdistill.base.errors import ConfigError

KINDS = ("jsonl", "tensorboard", "aim", "wandb")
EXTRA = {"tensorboard": "tensorboard", "aim": "aim", "wandb": "wandb"}


def numeric(row: dict) -> dict[str, float]:
    """The finite numbers of a metrics row, without `step` and wall-clock `time`."""
    return {k: float(v) for k, v in row.items() if isinstance(v, (int, float)) and not isinstance(v, bool)
            and k not in ("step", "time") and math.isfinite(float(v))}


def check(kinds: list[str]) -> None:
    """Refuse an unknown tracker, or one whose package is not installed (before anything starts)."""
    import importlib.util

    for kind in kinds:
        if kind not in KINDS:
            raise ConfigError(f"train.tracker: unknown tracker {kind!r}; choose from {', '.join(KINDS)}")
        module = {"tensorboard": "tensorboard", "aim": "aim", "wandb": "wandb"}.get(kind)
        if module and importlib.util.find_spec(module) is None:
            raise ConfigError(f"train.tracker={kind} needs the `{EXTRA[kind]}` package: "
                              f"`pip install {EXTRA[kind]}` (or `pip install kdistill[{kind}]`)")


class TensorBoard:
    def __init__(self, folder: Path, config: dict):
        from torch.utils.tensorboard import SummaryWriter

        self.writer = SummaryWriter(log_dir=str(folder / "tensorboard"))
        self.writer.add_text("config", "```\n" + "\n".join(f"{k}: {v}" for k, v in _flat(config).items()) + "\n```")

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.writer.add_scalar(k, v, step)
        self.writer.flush()

    def close(self) -> None:
        self.writer.close()


class Aim:
    def __init__(self, folder: Path, config: dict):
        from aim import Run

        # no system-metrics thread: it would sample the machine beside the training loop
        self.run = Run(repo=str(folder / "aim"), experiment="kdistill", system_tracking_interval=None)
        self.run["hparams"] = config

    def log(self, values: dict, step: int) -> None:
        for k, v in values.items():
            self.run.track(v, name=k, step=step)

    def close(self) -> None:
        self.run.close()


class WandB:
    def __init__(self, folder: Path, config: dict):
        import os

        import wandb

        os.environ.setdefault("WANDB_MODE", "offline")  # no network unless the user says so
        self.run = wandb.init(project="kdistill", dir=str(folder), config=config, reinit="finish_previous")

    def log(self, values: dict, step: int) -> None:
        self.run.log(values, step=step)

    def close(self) -> None:
        self.run.finish()


def _flat(d: dict, prefix: str = "") -> dict:
    out = {}
    for k, v in d.items():
        out.update(_flat(v, f"{prefix}{k}.") if isinstance(v, dict) else {f"{prefix}{k}": v})
    return out


class Trackers:
    """The configured trackers (besides metrics.jsonl, which the loop writes itself)."""

    def __init__(self, backends: list):
        self.backends = backends

    def log(self, row: dict, step: int) -> None:
        values = numeric(row)
        for b in self.backends:
            b.log(values, step)

    def close(self) -> None:
        for b in self.backends:
            b.close()


def open_trackers(kinds: list[str], folder: Path, config: dict) -> Trackers:
    check(kinds)
    makers = {"tensorboard": TensorBoard, "aim": Aim, "wandb": WandB}
    return Trackers([makers[k](Path(folder), config) for k in dict.fromkeys(kinds) if k in makers])
