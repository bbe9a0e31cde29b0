"""Where computation runs: one device, or one rank among several processes.

A command computes on ``--device``: ``auto`` picks CUDA, then MPS, then the CPU
(:func:`resolve_device`).

Training and evaluation across processes, with ``torchrun`` and PyTorch's own engine:
``torchrun --nproc-per-node N -m vaelab train ...`` starts N processes (ranks); each finds
its place in the environment torchrun sets (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``) and
joins the group (NCCL between GPUs, gloo on CPUs). Then:

* every rank holds the data set and walks the same seeded permutation of it; each global
  batch of ``batch_size`` images is cut into ``WORLD_SIZE`` contiguous shards, one per
  rank, so the global batch, and so the result, do not depend on the number of processes;
* the random numbers of a batch (reparameterization noise, dynamic binarization) are drawn
  for the whole global batch, from generators seeded alike on every rank, and each rank
  takes its shard of them (:func:`vaelab.noise.batch_shard`): N processes follow the same
  trajectory as one, up to the order of floating-point sums;
* gradients are averaged by ``DistributedDataParallel``, each rank's loss weighted by its
  share of the batch (uneven last batches stay exact);
* metrics are summed over ranks; only rank 0 writes files.

A single process (no torchrun) is a world of size 1 and none of this costs anything.
"""
from __future__ import annotations

import contextlib
import ctypes
import functools
import logging
import os
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from .errors import ConfigError

log = logging.getLogger(__name__)

Tensor = torch.Tensor


@dataclass(frozen=True)
class World:
    """This process's place among the ranks of a run."""

    rank: int = 0
    size: int = 1
    local_rank: int = 0

    @property
    def main(self) -> bool:
        """Whether this rank writes files and prints (rank 0)."""
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1

    def sum(self, t: Tensor) -> Tensor:
        """``t`` summed over ranks (in place), for metrics."""
        if self.distributed:
            dist.all_reduce(t)
        return t

    def all(self, flag: bool, device: torch.device) -> bool:
        """Whether ``flag`` holds on every rank (one choice for all of them)."""
        votes = self.sum(torch.tensor([float(flag)], device=device))
        return votes.item() == self.size

    def barrier(self) -> None:
        if self.distributed:
            dist.barrier()

    def part(self, n: int) -> tuple[int, int]:
        """(start, stop) of this rank's contiguous shard of ``n`` items; the first
        ``n % size`` ranks get one more."""
        base, extra = divmod(n, self.size)
        start = self.rank * base + min(self.rank, extra)
        return start, start + base + (self.rank < extra)

    def gather(self, t: Tensor) -> Tensor:
        """Rank-ordered concatenation along dim 0 of every rank's ``t`` (their sizes may
        differ by one, as :meth:`part` cuts), on every rank."""
        if not self.distributed:
            return t
        sizes = torch.tensor([t.shape[0]], device=t.device)
        all_sizes = [torch.zeros_like(sizes) for _ in range(self.size)]
        dist.all_gather(all_sizes, sizes)
        longest = int(max(s.item() for s in all_sizes))
        padded = torch.zeros((longest, *t.shape[1:]), dtype=t.dtype, device=t.device)
        padded[:t.shape[0]] = t
        parts = [torch.empty_like(padded) for _ in range(self.size)]
        dist.all_gather(parts, padded)
        return torch.cat([p[:int(s.item())] for p, s in zip(parts, all_sizes)])


SINGLE = World()


def launched() -> bool:
    """Whether this process was started by torchrun (or another launcher setting
    ``WORLD_SIZE``) as one of several."""
    return int(os.environ.get("WORLD_SIZE", "1")) > 1


def current_world() -> World:
    """This process's world as torchrun describes it (a world of one without torchrun)."""
    if not launched():
        return SINGLE
    return World(int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"]),
                 int(os.environ.get("LOCAL_RANK", "0")))


def join(device: torch.device) -> tuple[World, torch.device]:
    """Join the process group torchrun describes (once per process), and the device of
    this rank: ``cuda:LOCAL_RANK`` for a CUDA device, else ``device``. Without torchrun: a
    world of one and ``device`` unchanged."""
    world = current_world()
    if not world.distributed:
        return world, device
    if device.type == "cuda":
        device = torch.device("cuda", world.local_rank)
        torch.cuda.set_device(device)
    if not dist.is_initialized():
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo",
                                device_id=device if device.type == "cuda" else None)
    return world, device


def leave() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()


def resolve_device(name: str | torch.device) -> torch.device:
    """``auto``, ``cpu``, ``cuda`` (``cuda:N``) or ``mps`` -> a device that exists here."""
    name = str(name)
    if name == "auto":
        if torch.cuda.is_available():
            return torch.device("cuda")
        if getattr(torch.backends, "mps", None) and torch.backends.mps.is_available():
            return torch.device("mps")
        return torch.device("cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError("device 'cuda' requested but CUDA is not available; use --device auto")
    if name == "mps" and not torch.backends.mps.is_available():
        raise ConfigError("device 'mps' requested but MPS is not available; use --device auto")
    return torch.device(name)


def fast_bf16(device: str | torch.device) -> bool:
    """Whether bfloat16 matrix products are faster than float32 ones on ``device``: a CUDA
    device that supports them; a CPU with AVX512-BF16 or AMX where a product of the size
    of a decoder pass (1024x512 by 512x784) measures at least 1.25x float32's rate (the
    flag alone says nothing: a CPU that has AVX512-BF16 but no AMX measured 0.54-0.66x).
    Measured once per process."""
    device = torch.device(device)
    if device.type == "cuda":
        return torch.cuda.is_available() and torch.cuda.is_bf16_supported()
    if device.type != "cpu":
        return False
    checks = ("_is_avx512_bf16_supported", "_is_amx_tile_supported")
    return any(getattr(torch.cpu, name, lambda: False)() for name in checks) and \
        _cpu_bf16_speedup() >= 1.25


def fast_bf16_everywhere(device: torch.device, world: "World") -> bool:
    """:func:`fast_bf16` on every rank of ``world`` (one choice for all of them)."""
    return world.all(fast_bf16(device), device)


@functools.cache
def _cpu_bf16_speedup() -> float:
    """bf16 over fp32 matrix-product rate on this CPU (the best of 5 rounds of each)."""
    def best(dtype: torch.dtype) -> float:
        gen = torch.Generator().manual_seed(0)  # (not the global stream: a run's draws stay)
        a = torch.randn(1024, 512, generator=gen).to(dtype)
        b = torch.randn(512, 784, generator=gen).to(dtype)
        a @ b  # warm: the kernel chosen, the memory touched
        times = []
        for _ in range(5):
            t0 = time.perf_counter()
            for _ in range(4):
                a @ b
            times.append(time.perf_counter() - t0)
        return min(times)

    ratio = best(torch.float32) / best(torch.bfloat16)
    log.info("bfloat16 matrix products on this CPU: %.2fx float32's rate", ratio)
    return ratio


class Cores:
    """The CPU cores this process may run on, and how busy other processes keep them: from
    /proc/stat (Linux; elsewhere nothing is known and nothing changes), between two looks."""

    def __init__(self) -> None:
        self.ids = set(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else set()
        self.count = len(self.ids) or os.cpu_count() or 1
        self.last = self._look()

    def _look(self) -> tuple[float, int, int] | None:
        """(the CPU seconds of this process and its descendants, busy and total ticks of our
        cores), or None."""
        if not self.ids:
            return None
        mine, busy, total = own_seconds(), 0, 0
        try:
            with open("/proc/stat") as f:
                for line in f:
                    name, *ticks = line.split()
                    if name.startswith("cpu") and name[3:].isdigit() and int(name[3:]) in self.ids:
                        # user, nice, system, idle, iowait, irq, softirq, steal (guests in user)
                        t = [int(v) for v in ticks[:8]]
                        busy += sum(t) - t[3] - t[4]
                        total += sum(t)
        except (OSError, ValueError, IndexError):
            return None
        return mine, busy, total

    def busy_elsewhere(self) -> float | None:
        """Cores kept busy by other processes (and the hypervisor, as steal time) since the
        last look, less the time of this process and of the processes it started (torch.compile's
        workers); None where unknown or too soon to say
        (under 0.1 s since the last look, which then stays the last)."""
        a, b = self.last, self._look()
        if a is None or b is None:
            return None
        tick = os.sysconf("SC_CLK_TCK")
        elapsed = (b[2] - a[2]) / tick / self.count  # seconds of wall clock, per core
        if elapsed < 0.1:
            return None
        self.last = b
        busy = (b[1] - a[1]) / tick - (b[0] - a[0])  # core-seconds, less this process's own
        return min(float(self.count), max(0.0, busy / elapsed))


def own_seconds() -> float:
    """CPU seconds of this process and of every process it started, running (/proc) or
    ended (as their parents' reaped children): work of our own, such as torch.compile's
    worker processes, is not other work."""
    t = os.times()
    seconds, tick = t.user + t.system + t.children_user + t.children_system, \
        os.sysconf("SC_CLK_TCK")
    children: dict[int, list[tuple[int, int]]] = {}
    try:
        pids = os.listdir("/proc")
    except OSError:  # no /proc: this process's own and its reaped children's time
        pids = []
    for pid in pids:
        try:
            with open(f"/proc/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()  # (the name may hold spaces)
            # state, ppid, ..., utime, stime, cutime, cstime (fields 3, 4, 14-17)
            children.setdefault(int(fields[1]), []).append(
                (int(pid), sum(int(v) for v in fields[11:15])))
        except (OSError, ValueError, IndexError):
            continue  # not a process, or one that ended meanwhile
    todo = [os.getpid()]
    while todo:
        for pid, ticks in children.get(todo.pop(), []):
            seconds += ticks / tick
            todo.append(pid)
    return seconds


class ThreadFit:
    """PyTorch's CPU threads fitted to the cores other work leaves idle (at most the count
    it had), first over a short look, then (:meth:`refit`) over whatever time passed since
    the last fit, such as a training epoch: a job that starts beside a running training run
    takes its threads back from it, and gives them back when it ends. PyTorch's threads
    meet at a barrier after every operation, so one thread on a core that another process
    keeps busy stalls all of them: the digits run's epochs took 3.2x as long on 2 threads
    beside one busy core as on 1 (docs/benchmarks.md). ``OMP_NUM_THREADS``, when set, is the
    user's choice and is kept (``torchrun`` sets it for its ranks); on a GPU nothing
    changes."""

    def __init__(self, device: str | torch.device, look: float = 0.2) -> None:
        self.most = torch.get_num_threads()
        self.on = torch.device(device).type == "cpu" and self.most > 1 and \
            "OMP_NUM_THREADS" not in os.environ
        if self.on:
            self.cores = Cores()
            time.sleep(look)
            self.refit()

    def refit(self) -> int:
        """Fit the thread count to the idle cores since the last fit; the count in force."""
        now = torch.get_num_threads()
        busy = self.cores.busy_elsewhere() if self.on else None
        if busy is None:
            return now
        want = min(self.most, max(1, self.cores.count - int(busy + 0.5)))
        if want != now:
            torch.set_num_threads(want)
            log.log(logging.WARNING if want < now else logging.INFO,
                    "%.1f of this process's %d cores are busy with other work: computing on "
                    "%d thread(s), not %d%s", busy, self.cores.count, want, now,
                    " (a thread on a busy core stalls the others at every step; set "
                    "OMP_NUM_THREADS to choose)" if want < now else "")
        return want


def fit_threads(device: str | torch.device) -> int:
    """On a CPU, compute on no more threads than there are cores idle now (see
    :class:`ThreadFit`); the number of threads in force."""
    ThreadFit(device)
    return torch.get_num_threads()


@contextlib.contextmanager
def fitting_threads(device: str | torch.device):
    """Within: threads fitted to the idle cores; yields the :class:`ThreadFit`, whose
    :meth:`~ThreadFit.refit` a training run calls between epochs. PyTorch's thread count
    comes back on leaving."""
    with computing_threads(None):
        yield ThreadFit(device)


@contextlib.contextmanager
def computing_threads(count: int | None):
    """Within: PyTorch computes on ``count`` threads (None: as it was); the count comes
    back on leaving. A product's sums are split by the thread count, so where results
    must match bit for bit (a compressed file decoded), both sides use one count."""
    before = torch.get_num_threads()
    try:
        if count and count != before:
            torch.set_num_threads(count)
        yield
    finally:
        if torch.get_num_threads() != before:
            torch.set_num_threads(before)


@contextlib.contextmanager
def flushing_denormals(on: bool = True):
    """Within: the CPU's float arithmetic treats denormal numbers (magnitudes below
    float32's 1.2e-38) as zero (``on``), or keeps them, on this thread and on every thread
    of PyTorch's OpenMP pool (where that pool is GNU OpenMP, as in Linux wheels; elsewhere
    on this thread only); the previous mode comes back on leaving. Training runs within:
    Adam's moments of a weight whose gradient is almost always zero (a pixel black in
    nearly every image) decay through the denormal range, where an x86 core takes many
    times the cycles per operation; the reference MLP's epochs measured 1.2x faster
    flushed (docs/benchmarks.md). TensorFlow flushes them on CPUs too."""
    before = _flushing()
    _flush(on)
    try:
        yield
    finally:
        _flush(before)


def _flushing() -> bool:
    """Whether this thread flushes denormals now: a product whose exact value is 1e-40."""
    return bool(torch.tensor(1e-30) * 1e-10 == 0)


def _flush(on: bool) -> None:
    if not torch.set_flush_denormal(on):  # not a CPU that can (x86 with SSE3)
        return
    # each thread keeps its own mode, and the pool's threads that of the thread that
    # started them: run the setting on every one of them
    callback = ctypes.CFUNCTYPE(None, ctypes.c_void_p)(lambda _: torch.set_flush_denormal(on))
    for runtime in _gnu_openmp():
        runtime.GOMP_parallel(callback, None, torch.get_num_threads(), 0)


def _gnu_openmp() -> list[ctypes.CDLL]:
    """The GNU OpenMP runtimes loaded in this process (Linux), as libraries to call."""
    try:
        with open("/proc/self/maps") as f:
            paths = {line.split()[-1] for line in f if "/libgomp" in line}
    except OSError:
        return []
    runtimes = []
    for path in sorted(paths):
        try:  # (already loaded: the same library, the same pool)
            runtime = ctypes.CDLL(path)
            runtime.GOMP_parallel.argtypes = [ctypes.c_void_p, ctypes.c_void_p,
                                              ctypes.c_uint, ctypes.c_uint]
        except (OSError, AttributeError):  # gone, or a runtime older than GCC 4.9
            continue
        runtime.GOMP_parallel.restype = None
        runtimes.append(runtime)
    return runtimes
