"""Helpers the benchmark scripts share: the machine they ran on, and how they print paired ratios."""
import statistics
import time


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), or "unknown CPU"."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"


def paired(ratios):
    """Per-round ratios as "median× (min–max)"."""
    return f"{statistics.median(ratios):.2f}× ({min(ratios):.2f}–{max(ratios):.2f})"


def median_time(f, reps):
    """Seconds per call of `f`: two warm-up calls, then the median of `reps` (as `amg bench` times itself)."""
    f()
    f()
    times = []
    for _ in range(reps):
        t = time.perf_counter()
        f()
        times.append(time.perf_counter() - t)
    times.sort()
    return times[len(times) // 2]
