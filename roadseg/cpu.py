"""The CPU this runs on, from /proc/cpuinfo (Linux): its model name, which every speed figure
names (speeds differ between machines far more than between runs), and its feature flags, which
say whether oneDNN's bfloat16 kernels can run."""
import platform


def _cpuinfo():
    """The lines of /proc/cpuinfo, none where it cannot be read."""
    try:
        with open('/proc/cpuinfo') as f:
            return f.read().splitlines()
    except OSError:
        return []


def model():
    """The CPU's model name, else the platform's word for it."""
    for line in _cpuinfo():
        if line.startswith('model name'):
            return line.split(':', 1)[1].strip()
    return platform.processor() or 'an unknown CPU'


def flags():
    """The CPU's feature flags, an empty set where they cannot be read."""
    return {flag for line in _cpuinfo() if line.startswith('flags')
            for flag in line.split(':', 1)[1].split()}
