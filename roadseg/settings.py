"""The base of the typed configurations (data.config, model.config, training.config): frozen
dataclasses whose fields carry what their command-line flag shows (help, choices, how its text
reads), checked when made, and read from and written to the flat JSON of recipes and of a run's
config.json. The command line is generated from these fields (training.options), so each
option has one home: its field, with its one default."""
import argparse
import dataclasses
import json
import typing

from roadseg.errors import UserError

SHAPE = typing.Tuple[int, int]  # (height, width); "HxW" on the command line and in JSON


def option(default, help=None, *, choices=None, parse=None, metavar=None, on_resume=False):
    """A configuration field: its `default`, the `help` of its flag (argparse's, which may say
    %(default)s), the values it takes (`choices`), how its text becomes a value (`parse`, which
    raises argparse.ArgumentTypeError or ValueError), and whether --resume may change it."""
    return dataclasses.field(default=default, metadata={
        'help': help, 'choices': choices, 'parse': parse, 'metavar': metavar,
        'on_resume': on_resume})


def flag(name):
    """The command-line flag of the option `name`: --snake-case."""
    return '--' + name.replace('_', '-')


def kind(field):
    """What a field holds: bool, int, float, str or SHAPE (an Optional[...] unwrapped)."""
    hint = field.type
    if typing.get_origin(hint) is typing.Union:
        hint = next(arg for arg in typing.get_args(hint) if arg is not type(None))
    return hint


def optional(field):
    """Whether a field may stay unset (None): its type is Optional[...]."""
    return typing.get_origin(field.type) is typing.Union


class Settings:
    """A frozen dataclass's checks: each field's choices, then RULES, (keeps(config),
    message(config)) pairs in the order they are checked; the first broken one stops with its
    message."""
    RULES = ()

    def __post_init__(self):
        for field in dataclasses.fields(self):
            choices, value = field.metadata.get('choices'), getattr(self, field.name)
            if choices is not None and value is not None and value not in choices:
                raise UserError(f'{flag(field.name)} {value}: use one of '
                                f'{", ".join(map(str, choices))}')
        for keeps, message in self.RULES:
            if not keeps(self):
                raise UserError(message(self))

    def values(self):
        """{option: value} of this section's fields, as Python values."""
        return {field.name: getattr(self, field.name) for field in dataclasses.fields(self)}


def to_json(field, value):
    """A field's value as JSON holds it: a shape as "HxW", the rest as it is."""
    if kind(field) is SHAPE and value is not None:
        return '{}x{}'.format(*value)
    return value


def from_json(field, value, source):
    """A field's value from JSON (a recipe, a run's config.json) named `source`, of the type
    and among the choices its flag takes, or one line naming the file and the option."""
    name, wanted, hint = field.name, flag(field.name), kind(field)
    shown = f'{source}: {name} is {json.dumps(value)}; {wanted}'
    if value is None:
        if optional(field):
            return None
        raise UserError(f'{source}: no value for option {name!r}')
    if hint is bool:
        if not isinstance(value, bool):
            raise UserError(f'{shown} is true or false')
        return value
    if hint in (int, float):
        if isinstance(value, bool) or not isinstance(value, (int,) if hint is int else
                                                     (int, float)):
            raise UserError(f'{shown} takes {"a whole number" if hint is int else "a number"}')
        return hint(value)
    if not isinstance(value, str):
        raise UserError(f'{shown} takes text, as on the command line')
    choices, parse = field.metadata.get('choices'), field.metadata.get('parse')
    if choices is not None and value not in choices:
        raise UserError(f'{shown} takes one of {", ".join(map(str, choices))}')
    if parse:
        try:
            return parse(value)
        except (argparse.ArgumentTypeError, ValueError) as e:
            raise UserError(f'{shown}: {e}') from None
    return value
