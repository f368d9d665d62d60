"""What the benchmark scripts print about the machine they ran on."""


def cpu_model():
    """The CPU's model name from /proc/cpuinfo (Linux), or "unknown CPU"."""
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "unknown CPU"
