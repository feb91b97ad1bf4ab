"""Audits across processes: torchrun sharding and the merge, on torch.distributed (no scheduler of our own).

`torchrun --nproc-per-node N -m auditor run ...` (or `--nnodes` with a rendezvous, across machines) sets
RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; with WORLD_SIZE > 1, `start` joins the process group:
NCCL when the audit runs on CUDA (each rank on cuda:LOCAL_RANK), gloo on the CPU. Then:

- every rank loads the model and lists the image files (the same sorted list: the files must be on a
  folder every machine sees at the same path); each rank checks (decodes, hashes) a contiguous block
  of the files, and the results are exchanged, so every rank holds the same ImageSet;
- each rank runs the shared forward pass on its shard: whole `--batch-size` batches of the sorted list,
  contiguous, so that every batch holds the same images as in one process and its logits are
  bit-identical; the logits (float32, on the CPU) are gathered to every rank in image order;
- rank 0 runs every technique on the gathered forward pass and writes the one report. The other ranks
  run only the techniques that spread their per-image work (`spreads = True`: every gallery, trust and
  maximization; not architecture and kernels), in the same order: `spread` gives each rank its block
  of the items (an image, a --batch-size block of the trust section's images, or a block of channels: the
  unit of work whatever the world size, so the numbers are those of one process), every rank gets every
  result, and an item's exception is raised on every rank; `broadcast` gives them rank 0's shared results first. Then they leave the group, write nothing,
  and `run_audit` returns None there.

Failure: each exchange is one all_gather_object of (ok, error line, payload). Work whose error the other
ranks must learn runs under `guard`: an exception there becomes this rank's status at the exchange the
others are waiting in, so every rank raises RankFailed together (exit status 1), and rank 0 prints one
line naming the first failed rank and its error. The group has a timeout (AUDITOR_DIST_TIMEOUT seconds,
default 1800), so a rank that dies without a word stops the others then. Ctrl-C reaches every rank.

Test hook: AUDITOR_FAIL_RANK=R makes rank R raise a RuntimeError at the start of its shard of the
forward pass. It is read only here, and only for tests.
"""

from __future__ import annotations

import dataclasses
import os
import pickle
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import timedelta
from typing import Any

import torch
import torch.distributed as dist

from auditor.errors import AuditorError

TIMEOUT_S = 1800  # default of AUDITOR_DIST_TIMEOUT: the longest any rank waits for the others at an exchange


class RankFailed(AuditorError):
    """A rank of a torchrun audit failed: every rank raises this, with the first failed rank's error."""

    def __init__(self, rank: int, error: str) -> None:
        super().__init__(error if rank == 0 else f"rank {rank} failed: {error}")
        self.rank, self.error = rank, error


@dataclass
class World:
    """This process's place in the run: one process (the default) or a rank of a torchrun group."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1
    backend: str | None = None  # "gloo" or "nccl" once the group is joined
    owned: bool = False  # the group was created here (and is destroyed here), not by the caller's program
    open: bool = False  # the group is there for further exchanges
    shards: list[int] = field(default_factory=list)  # images in each rank's forward shard
    spread: list[int] = field(default_factory=list)  # items each rank computed in `spread` calls

    @property
    def active(self) -> bool:
        return self.size > 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    def record(self) -> dict[str, Any]:
        """For the audit record: world size, backend, and each rank's share of the forward pass."""
        return {"world_size": self.size, "backend": self.backend or "none", "shards": list(self.shards) or None,
                "spread": list(self.spread) or None}


SINGLE = World()
_current = SINGLE


def current() -> World:
    """The World that `start` set up (one process until then)."""
    return _current


def launched() -> tuple[int, int]:
    """(RANK, WORLD_SIZE) as torchrun sets them; (0, 1) without torchrun. Torch-free callers use this."""
    return int(os.environ.get("RANK", "0")), int(os.environ.get("WORLD_SIZE", "1"))


def start(device: torch.device) -> World:
    """Join the torchrun group when there is one (NCCL on CUDA, gloo on the CPU), once per process.

    A group the caller's own program already created is used as it is, and left open at the end."""
    global _current
    rank, size = launched()
    if size <= 1 and not (dist.is_available() and dist.is_initialized()):
        _current = SINGLE
        return _current
    if _current.open:
        return _current
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    local_size = int(os.environ.get("LOCAL_WORLD_SIZE", str(size)))
    owned = not dist.is_initialized()
    if owned:
        backend = "nccl" if device.type == "cuda" else "gloo"
        if device.type == "cuda":
            torch.cuda.set_device(rank_device(device, local_rank))
        try:
            dist.init_process_group(backend, timeout=timedelta(seconds=_timeout()))
        except Exception as error:  # noqa: BLE001 - a rendezvous that fails is the user's setup, in one line
            raise AuditorError(f"torchrun: cannot join the process group with {backend} ({one_line(error)})") from None
    rank, size, backend = dist.get_rank(), dist.get_world_size(), str(dist.get_backend())
    _current = World(rank, size, local_rank, local_size, backend, owned, open=True)
    return _current


def rank_device(device: torch.device, local_rank: int) -> torch.device:
    """Each rank of a CUDA audit on its own GPU: cuda:LOCAL_RANK (modulo the GPUs there are)."""
    if device.type != "cuda":
        return device
    return torch.device("cuda", local_rank % max(1, torch.cuda.device_count()))


def finish(world: World) -> None:
    """After the last exchange: leave the group this module created (rank 0 goes on alone)."""
    global _current
    if world.open and world.owned and dist.is_initialized():
        dist.destroy_process_group()
    world.open = False
    _current = world


def _timeout() -> int:
    try:
        return max(1, int(os.environ.get("AUDITOR_DIST_TIMEOUT", TIMEOUT_S)))
    except ValueError:
        raise AuditorError("AUDITOR_DIST_TIMEOUT: give the seconds a rank waits for the others, e.g. 1800") from None


def one_line(error: BaseException) -> str:
    """An error as the CLI shows it: an AuditorError's own line, else its type and first line."""
    if isinstance(error, AuditorError):
        return str(error).splitlines()[0] if str(error) else type(error).__name__
    text = str(error).splitlines()[0] if str(error) else ""
    return f"{type(error).__name__}: {text}" if text else type(error).__name__


def exchange(world: World, payload: Any, error: str | None = None) -> list[Any]:
    """Every rank's payload, by rank; RankFailed (on every rank) when any rank came with an error."""
    if not world.open:
        if error is not None:
            raise RankFailed(world.rank, error)
        return [payload]
    gathered: list[Any] = [None] * world.size
    dist.all_gather_object(gathered, (error is None, error, None if error else payload))
    failed = [(rank, line) for rank, (ok, line, _) in enumerate(gathered) if not ok]
    if failed:
        finish(world)
        raise RankFailed(*failed[0])
    return [part for _, _, part in gathered]


@contextmanager
def guard(world: World) -> Iterator[None]:
    """Work before an exchange: its exception becomes this rank's status at the exchange the others wait in,
    so that every rank raises RankFailed (Ctrl-C, which reaches every rank, is left to stop each)."""
    try:
        yield
    except RankFailed:
        raise
    except Exception as error:
        if not world.open:
            raise
        exchange(world, None, one_line(error))  # raises RankFailed on every rank
        raise  # pragma: no cover - exchange always raises here


def block(count: int, world: World) -> range:
    """This rank's contiguous block of `count` items (the last ranks take one more when it does not divide)."""
    start = count * world.rank // world.size
    return range(start, count * (world.rank + 1) // world.size)


def shard(count: int, batch_size: int, world: World) -> range:
    """This rank's images of the forward pass: a contiguous run of whole batches of one process's batching,
    so that every batch, and so every logit, is the same as in one process."""
    size = max(1, batch_size)
    batches = block(-(-count // size), world)
    return range(min(count, batches.start * size), min(count, batches.stop * size))


def fail_hook(world: World) -> None:
    """The test hook: AUDITOR_FAIL_RANK=R makes rank R fail here."""
    wanted = os.environ.get("AUDITOR_FAIL_RANK")
    if wanted is not None and wanted.strip() == str(world.rank):
        raise RuntimeError(f"AUDITOR_FAIL_RANK={world.rank}: this rank fails on purpose (a test hook)")


def gather_rows(world: World, part: torch.Tensor | None) -> torch.Tensor:
    """Each rank's rows (its shard's logits, on the CPU; None for an empty shard) as one tensor in rank order,
    on every rank; the shard sizes are kept for the record."""
    parts = exchange(world, None if part is None else part.detach().cpu().contiguous())
    world.shards = [0 if p is None else int(p.shape[0]) for p in parts]
    found = [p for p in parts if p is not None]
    if not found:
        raise AuditorError("the forward pass gave no logits on any rank")
    return torch.cat(found)


def spread(world: World, count: int, compute: Callable[[int], Any]) -> list[Any]:
    """[compute(0), ..., compute(count - 1)] on every rank, each rank computing its block of the items.

    An item (an image, a block of images or of channels) is the unit of work in one process too, so that its numbers never depend on
    which other items share its batch, nor on the number of ranks. Results come back on the CPU (`on_cpu`),
    whichever GPU computed them. An exception raised by an item is raised on every rank, as in one process
    (the first rank's that raised one), so a caller's `except` (a method that does not apply) and the
    report's error for a failing technique are the same whatever the number of ranks."""
    if not world.open:
        return [on_cpu(compute(i)) for i in range(count)]
    mine: list[Any] | None = None
    raised: BaseException | None = None
    try:
        mine = [on_cpu(compute(i)) for i in block(count, world)]
    except Exception as error:  # noqa: BLE001 - handed to every rank, raised there
        raised = _picklable(error)
    parts = exchange(world, (mine, raised))
    failed = next((error for _, error in parts if error is not None), None)
    if failed is not None:
        raise failed
    world.spread = [done + len(part) for done, (part, _) in zip(world.spread or [0] * world.size, parts)]
    return [result for part, _ in parts for result in part]


def _picklable(error: Exception) -> Exception:
    """The exception itself when it can travel to the other ranks (pickled and rebuilt: one whose
    constructor takes other arguments cannot), else a RuntimeError of its one line."""
    try:
        pickle.loads(pickle.dumps(error))  # our own bytes, back at once
    except Exception:  # noqa: BLE001 - any failure to pickle
        return RuntimeError(one_line(error))
    return error


def on_cpu(value: Any) -> Any:
    """`value` with every tensor in it (in dicts, lists, tuples and dataclasses) moved to the CPU."""
    if isinstance(value, torch.Tensor):
        return value.cpu()
    if isinstance(value, dict):
        return {key: on_cpu(item) for key, item in value.items()}
    if isinstance(value, tuple) and hasattr(value, "_fields"):  # a named tuple
        return type(value)(*(on_cpu(item) for item in value))
    if isinstance(value, (list, tuple)):
        return type(value)(on_cpu(item) for item in value)
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return dataclasses.replace(value, **{f.name: on_cpu(getattr(value, f.name))
                                             for f in dataclasses.fields(value) if f.init})
    return value


def broadcast(world: World, value: Any) -> Any:
    """Rank 0's `value` on every rank (the other ranks' own values are dropped)."""
    if not world.open:
        return value
    return exchange(world, on_cpu(value) if world.main else None)[0]


def sharded_check(world: World, check: Callable[[list[Any]], list[Any]]) -> Callable[[list[Any]], list[Any]]:
    """`check` (a list of files -> one result each) split over the ranks: each does its block, all get all."""

    def checked(items: Sequence[Any]) -> list[Any]:
        items = list(items)
        if not world.open:
            return check(items)
        with guard(world):
            mine = check([items[i] for i in block(len(items), world)])
        return [result for part in exchange(world, mine) for result in part]

    return checked
