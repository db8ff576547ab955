"""The base of the typed configurations (data.settings, model.settings, training.settings):
frozen dataclasses checked against their RULES when made, and read from main.py's options."""
import dataclasses

from roadseg.errors import UserError


class Settings:
    """A frozen dataclass's checks: RULES, (keeps(config), message(config)) pairs in the order
    they are checked; the first broken one stops with its message."""
    RULES = ()

    def __post_init__(self):
        for keeps, message in self.RULES:
            if not keeps(self):
                raise UserError(message(self))

    @classmethod
    def of(cls, options):
        """The configuration of main.py's options (an argparse result, or anything with the
        same attributes)."""
        return cls(**{field.name: getattr(options, field.name)
                      for field in dataclasses.fields(cls)})
