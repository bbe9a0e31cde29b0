"""What the benchmarks share: the hardware line, timing, peak memory and arithmetic."""
from __future__ import annotations

import platform
import time
from pathlib import Path

import torch
from torch.utils.flop_counter import FlopCounterMode


def hardware(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    name = platform.processor() or platform.machine()
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() \
            else []:
        if line.startswith("model name"):
            name = line.split(":", 1)[1].strip()
            break
    return f"{name}, {torch.get_num_threads()} threads"


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


class PeakMemory:
    """Peak memory of a block: allocated CUDA memory on a GPU; on a CPU the process's peak
    resident set (VmHWM, reset at the start of the block through /proc/self/clear_refs),
    which includes everything the process holds."""

    def __init__(self, device: torch.device):
        self.device, self.bytes = device, None

    def __enter__(self):
        if self.device.type == "cuda":
            torch.cuda.reset_peak_memory_stats(self.device)
        else:
            try:
                Path("/proc/self/clear_refs").write_text("5")
            except OSError:
                pass
        return self

    def __exit__(self, *exc):
        if self.device.type == "cuda":
            self.bytes = torch.cuda.max_memory_allocated(self.device)
        else:
            self.bytes = proc_status("VmHWM")
        return False


def proc_status(field: str) -> int | None:
    """A memory figure of this process from /proc/self/status (``VmHWM``, ``VmRSS``,
    ``RssAnon``, ...) in bytes; None where there is no such file."""
    path = Path("/proc/self/status")
    if not path.exists():
        return None
    for line in path.read_text().splitlines():
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024
    return None


def flops(fn, *args) -> int:
    """Floating-point operations of ``fn(*args)`` (matrix products and convolutions, the
    arithmetic that bounds these models), counted by torch.utils.flop_counter."""
    with FlopCounterMode(display=False) as counter:
        fn(*args)
    return counter.get_total_flops()


def matmul_rate(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 2048,
                seconds: float = 1.0) -> float:
    """FLOP/s of a large square matrix product on ``device``: the practical arithmetic peak
    the benchmarks compare their rates against."""
    a = torch.randn(n, n, device=device, dtype=dtype)
    b = torch.randn(n, n, device=device, dtype=dtype)
    a @ b
    sync(device)
    reps, t0 = 0, time.perf_counter()
    while time.perf_counter() - t0 < seconds:
        a @ b
        reps += 1
        sync(device)
    return 2 * n ** 3 * reps / (time.perf_counter() - t0)
