"""Several processes on PyTorch's own engine: DDP, or FSDP2 (`fully_shard`), under torchrun or Accelerate.

    torchrun --nproc_per_node=2 -m kdistill distill --config configs/demo.yaml
    accelerate launch --multi_gpu --num_processes 2 -m kdistill distill --config configs/demo.yaml  # CPU too

`train.distributed: auto | none | ddp | fsdp` (auto = ddp when launched with more than one process).
Every process draws the same global batch of `train.batch_size` examples from the same seeded stream and
keeps its own rows (`local_rows`); the token count that divides the loss is the global batch's, counted
before the split, so N processes compute the loss and gradients of one process with that batch. DDP and
FSDP average gradients over processes, so each process's loss is multiplied by N (`loss_scale`). The
student and the objective run as one module (`step.StudentLoss`) under the wrapper, so the output layer's
weight is read inside the forward (unsharded under FSDP) and the wrapper sees every use of it. The
frozen teacher is a whole copy in every process (ddp and fsdp), never wrapped for gradients. Only the
main process writes; checkpoints hold full (gathered) state dicts, so a run resumes on any number of
processes with the same global batches. Feature-term projections (`features.FeatureLoss`) are part of the
wrapped module: replicated under DDP, sharded with the root unit under FSDP, their gradients averaged
like the student's; `Whole.refresh` gathers them for the checkpoint and `copy_whole` loads them back.
"""
from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass

import torch
from torch import nn

from kdistill.base.errors import ConfigError
from kdistill.models.heads import decoder_layers

log = logging.getLogger("kdistill")
MODES = ("auto", "none", "ddp", "fsdp")


@dataclass
class Dist:
    mode: str = "none"
    world: int = 1
    rank: int = 0

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def active(self) -> bool:
        return self.world > 1

    @property
    def loss_scale(self) -> float:
        return float(self.world)  # the wrappers average gradients; the loss is already / global tokens

    def barrier(self) -> None:
        if self.active:
            torch.distributed.barrier()

    def all_sum(self, value: float) -> float:
        if not self.active:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return float(t.item())

    def sum_dict(self, values: dict) -> dict:
        """Each key's sum over processes (a key missing on some process counts 0 there)."""
        if not self.active:
            return values
        everyone = [None] * self.world
        torch.distributed.all_gather_object(everyone, sorted(values))
        keys = sorted(set().union(*everyone))
        t = torch.tensor([float(values.get(k, 0.0)) for k in keys], dtype=torch.float64)
        torch.distributed.all_reduce(t)
        return dict(zip(keys, t.tolist()))

    def broadcast(self, obj):
        """`obj` of the main process, on every process."""
        if not self.active:
            return obj
        box = [obj]
        torch.distributed.broadcast_object_list(box, src=0)
        return box[0]

    @contextlib.contextmanager
    def main_first(self):
        """The body runs on the main process first (it fills caches: GGUF conversion, generated data)."""
        if not self.main:
            self.barrier()
        yield
        if self.main:
            self.barrier()

    def local_rows(self, batch_size: int) -> slice:
        """This process's rows of a global batch: contiguous, sizes differing by at most one."""
        base, extra = divmod(batch_size, self.world)
        start = self.rank * base + min(self.rank, extra)
        return slice(start, start + base + (self.rank < extra))


def launched_world() -> tuple[int, int]:
    return int(os.environ.get("WORLD_SIZE", "1")), int(os.environ.get("RANK", "0"))


def check(cfg) -> None:
    """Refusals that need no process group: the mode, a batch smaller than the number of processes,
    and an Accelerate launch that asked for several processes but started one."""
    d, world = cfg.train.distributed, launched_world()[0]
    if d not in MODES:
        raise ConfigError(f"train.distributed={d!r}: choose one of {', '.join(MODES)}")
    if world > cfg.train.batch_size:
        raise ConfigError(f"train.batch_size={cfg.train.batch_size} is smaller than the {world} processes launched: "
                          "every process needs at least one row of each global batch; raise train.batch_size")
    if world == 1 and os.environ.get("ACCELERATE_USE_CPU") is not None and os.environ.get("MASTER_ADDR"):
        log.warning("accelerate launch asked for several processes but started one (its simple launcher); "
                    "use `accelerate launch --multi_gpu --num_processes N ...` (also on CPU: gloo) or "
                    "`torchrun --nproc_per_node=N`")


def setup(cfg, device: torch.device) -> Dist:
    world, rank = launched_world()
    mode = cfg.train.distributed
    if world == 1 or mode == "none":
        if world > 1:
            raise ConfigError(f"train.distributed=none but {world} processes were launched; launch one process "
                              "or set train.distributed=auto")
        return Dist()
    mode = "ddp" if mode == "auto" else mode
    if not torch.distributed.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(int(os.environ.get("LOCAL_RANK", "0")))
        torch.distributed.init_process_group(backend)
    log.info("process %d of %d (%s)", rank, world, mode)
    return Dist(mode, world, rank)


def check_visible(dist: Dist, folder) -> None:
    """Every process must see the main process's output folder (it resumes from the checkpoints there):
    the main process writes a file with a fresh token, the others read it back."""
    if not dist.active:
        return
    import secrets
    import socket
    import time
    from pathlib import Path

    marker = Path(folder) / f".kdistill-visible-{os.environ.get('TORCHELASTIC_RUN_ID', 'run')}"
    token = dist.broadcast(secrets.token_hex(8) if dist.main else None)
    if dist.main:
        marker.write_text(token)
    dist.barrier()
    seen = dist.main
    for _ in range(20):  # a network filesystem may show the file a little later
        seen = seen or (marker.is_file() and marker.read_text() == token)
        if seen:
            break
        time.sleep(0.1)
    blind = dist.all_sum(0.0 if seen else 1.0)
    if dist.main:
        marker.unlink(missing_ok=True)
    if blind:
        raise ConfigError(f"output_dir={folder}: {int(blind)} of the {dist.world} processes cannot see the folder "
                          f"the main process writes (process {dist.rank} on {socket.gethostname()} is "
                          f"{'fine' if seen else 'one of them'}); put output_dir on a filesystem every node mounts")


def world_change(saved: dict, dist: Dist) -> str | None:
    """What a resume on another number of processes does, or None when the number is the same.
    Checkpoints hold whole state dicts and the global batch is the config's, so any number resumes."""
    before, mode = int(saved.get("world", 1)), saved.get("distributed", "none")
    if before == dist.world:
        return None
    return (f"the checkpoint was written by {before} process{'es' if before > 1 else ''} ({mode}); resuming on "
            f"{dist.world} ({dist.mode}): its state dicts are whole, so they are resharded and the run keeps the "
            "same global batches and data position (only the order of floating-point sums changes)")


def teardown(dist: Dist) -> None:
    if dist.active and torch.distributed.is_initialized():
        torch.distributed.destroy_process_group()


def device_for(dist_world: int, device: torch.device) -> torch.device:
    if device.type == "cuda" and dist_world > 1:
        return torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
    return device


def wrap(module: nn.Module, dist: Dist, device: torch.device) -> nn.Module:
    """The student's loss module (`train/step.StudentLoss`) under DDP or FSDP2 (each decoder layer its own
    unit), or as it is."""
    if dist.mode == "ddp":
        from torch.nn.parallel import DistributedDataParallel

        ids = [device.index] if device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids, gradient_as_bucket_view=True)  # no copy of 226 MB
    if dist.mode == "fsdp":
        from torch.distributed.device_mesh import init_device_mesh
        from torch.distributed.fsdp import fully_shard

        mesh = init_device_mesh(device.type, (dist.world,))
        for layer in decoder_layers(module.student) or []:
            fully_shard(layer, mesh=mesh)
        fully_shard(module, mesh=mesh)
    return module


class Whole:
    """What evaluation and checkpoints read: the student itself, or under FSDP a plain copy (made before
    sharding) whose weights `refresh` gathers from the shards (every process must call it)."""

    def __init__(self, student, dist: Dist):
        import copy

        self.dist, self.student = dist, student
        self.copy = copy.deepcopy(student) if dist.mode == "fsdp" else student

    def refresh(self, model: nn.Module) -> nn.Module:
        if self.dist.mode != "fsdp":
            return self.student
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

        full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
        prefix = "student."
        self.copy.load_state_dict({k[len(prefix):]: v for k, v in full.items() if k.startswith(prefix)},
                                  strict=False)
        if getattr(model, "features", None) is not None:  # the feature projections, whole, for the checkpoint
            model.features.keep_whole({k[len("features."):]: v for k, v in full.items() if k.startswith("features.")})
        return self.copy


def full_optimizer_state(optimizer, dist: Dist) -> dict | None:
    """The optimizer's state dict with every sharded tensor whole (collective under FSDP), else None."""
    if dist.mode != "fsdp":
        return None
    from torch.distributed.tensor import DTensor

    state = optimizer.state_dict()  # its per-parameter dicts are the optimizer's own: copy, never assign
    whole = {idx: {name: v.full_tensor() if isinstance(v, DTensor) else v for name, v in sorted(state["state"][idx].items())}
             for idx in sorted(state["state"])}
    return {"state": whole, "param_groups": state["param_groups"]}


def load_into_shards(model: nn.Module, full: dict, optimizer, optimizer_state: dict, dist: Dist) -> None:
    """Resume under FSDP: copy whole weights and optimizer tensors (from a checkpoint) into the shards."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    prefix = "student."
    params = dict(model.named_parameters())
    for name, p in params.items():
        key = name[len(prefix):] if name.startswith(prefix) else name
        if key in full and isinstance(p, DTensor):
            copy_whole(p, full[key])
    ordered = [p for group in optimizer.param_groups for p in group["params"]]
    for idx in sorted(optimizer_state["state"]):
        p = ordered[int(idx)]
        per = optimizer_state["state"][idx]
        for name in sorted(per):
            v = per[name]
            if isinstance(p, DTensor) and torch.is_tensor(v) and tuple(v.shape) == tuple(p.shape):
                per[name] = distribute_tensor(v.to(p.dtype), p.device_mesh, p.placements)
    optimizer.load_state_dict(optimizer_state)


@torch.no_grad()
def copy_whole(param: torch.Tensor, whole: torch.Tensor) -> None:
    """Copy a whole tensor into `param`, into this process's shard of it when it is sharded (fsdp; every
    process must call it then)."""
    from torch.distributed.tensor import DTensor, distribute_tensor

    if isinstance(param, DTensor):
        param.to_local().copy_(distribute_tensor(whole.to(param.dtype), param.device_mesh, param.placements).to_local())
    else:
        param.copy_(whole)
