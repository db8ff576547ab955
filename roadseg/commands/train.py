"""Train a model into a new run folder, or go on with one (`--resume`): main.py's options, read
and checked before TensorFlow loads, then roadseg.training.train. `python main.py --help` and
`roadseg-train --help` list the options."""
from roadseg.training import options


def main(argv=None):
    """Train on the options of `argv` (sys.argv's without); the run folder."""
    given = options.options(argv)
    from roadseg.training.train import train  # TensorFlow loads here (seconds)
    return train(given.config, given.resume, given.command)
