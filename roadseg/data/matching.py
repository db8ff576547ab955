"""A data set's classes matched to a model's by name, so that a model is scored on a data set it
was not trained on (evaluate.py --dataset): CamVid's road model on KITTI Road, a CamVid model on
Cityscapes.

The scored classes are those whose names the two share (case, spaces, `_` and `-` aside), in
the model's order, after one for the rest when the model has classes of other names: the
model's predictions of those, and the labels of the data set's classes of other names, all
count as the rest. It is named as the model's class when that is one (a road model's `other`
or `not road`, or the first of a two-class model, which is its rest), else `other`; a shared
class called other, background or not something is the rest itself. So CamVid's road model
(other, road) on KITTI (not road, road) scores road as road and not road as other, and a
CamVid 11-class model on KITTI scores Road and other. A class of
the data set is void, scored in neither figure, only when the model has no class left to stand
for it (each of its classes shared). When the two share no class but a rest, there is nothing
to score, and when two classes of one side are one name once case, spaces, `_` and `-` are set
aside, neither can be matched: each a UserError.
"""
import re
from dataclasses import dataclass

import numpy as np

from roadseg.data.classes import VOID
from roadseg.errors import UserError

REST = ('other', 'background', 'rest')  # names of a class standing for everything else


def normal(name):
    """A class name as it is matched: lower case, words separated by one space."""
    return ' '.join(re.split(r'[\s_-]+', name.casefold())).strip()


def is_rest(name):
    """Whether a class called `name` stands for everything else: other, background, not road."""
    return normal(name) in REST or normal(name).startswith('not ')


@dataclass(frozen=True)
class ClassMatch:
    """The scored classes' `names`; `truth`, a table of 256 taking a data set's class map to
    the scored classes (VOID for void); `predicted`, one taking the model's classes to them;
    and how the data set's classes were matched, for the record: `pairs` (data set class, its
    scored class), `rest` (those counted as the rest, the scored class `rest_name`), `void` and
    `merged` (the model's classes counted as the rest)."""
    names: tuple
    truth: np.ndarray
    predicted: np.ndarray
    pairs: tuple = ()
    rest_name: str = None
    rest: tuple = ()
    void: tuple = ()
    merged: tuple = ()

    def road_probability(self, probabilities):
        """The probability of scored class 1 (road, for two scored classes): the sum of the
        model's `probabilities` [..., model classes] of the classes it takes."""
        return probabilities[..., self.predicted == 1].sum(-1)

    def record(self):
        """{data set class: the scored class it counts as, or None for void}."""
        return {**{name: scored for name, scored in self.pairs},
                **dict.fromkeys(self.rest, self.rest_name), **dict.fromkeys(self.void)}

    def describe(self, where):
        """One line saying how the classes of `where` (e.g. `--dataset kitti`) were matched."""
        renamed = [data if data == scored else f'{data} as {scored}' for data, scored in
                   self.pairs]
        parts = [f'{where}: classes matched to the model\'s by name: {", ".join(renamed)}']
        if self.rest:
            parts.append(f'counted as {self.rest_name}: {", ".join(self.rest)}')
        if len(self.merged) > 1:
            parts.append(f'{self.rest_name} is the model\'s {", ".join(self.merged)}')
        if self.void:
            parts.append(f'void, as the model has no such class (scored in neither figure): '
                         f'{", ".join(self.void)}')
        return '; '.join(parts)


def identity(names):
    """The ClassMatch of a model scored on its own classes, `names`."""
    classes = np.arange(len(names), dtype=np.uint8)
    truth = np.full(256, VOID, np.uint8)
    truth[:len(names)] = classes
    return ClassMatch(tuple(names), truth, classes)


def match(data_names, model_names, where, model):
    """The ClassMatch of a data set's classes `data_names` onto the model's `model_names` (see
    the module's docstring); a UserError naming `where` (the flag and the data set) and `model`
    when they share no class but a rest."""
    for names, whose in ((data_names, where), (model_names, f'the model {model}')):
        seen = {}
        for name in names:
            if seen.setdefault(normal(name), name) != name:
                raise UserError(f'{whose}: classes {seen[normal(name)]!r} and {name!r} are one '
                                f'name once case, spaces, _ and - are set aside, so neither can '
                                f'be matched by name; rename one')
    index = {normal(name): i for i, name in enumerate(model_names)}
    found = {d: index.get(normal(name)) for d, name in enumerate(data_names)}
    shared = sorted({m for m in found.values() if m is not None})
    if all(is_rest(model_names[m]) for m in shared):
        raise UserError(f'{where}: none of its classes ({", ".join(data_names)}) is named as a '
                        f'class of the model {model} ({", ".join(model_names)}), so there is '
                        f'nothing to score; choose a data set with classes of those names, or '
                        f'for your own data (--dataset folder) name its classes so in '
                        f'classes.json')
    merged = [m for m in range(len(model_names)) if m not in shared]
    kept = next((m for m in shared if is_rest(model_names[m])), None)
    names = [model_names[m] for m in shared]
    if merged and kept is None:  # a class of its own for the rest, first
        single = len(merged) == 1 and (is_rest(model_names[merged[0]]) or merged == [0] and
                                       len(model_names) == 2)  # a road model's first
        names.insert(0, model_names[merged[0]] if single else 'other')
    scored = {m: names.index(model_names[m]) for m in shared}
    rest = scored[kept] if kept is not None else 0 if merged else VOID
    predicted = np.array([scored.get(m, rest) for m in range(len(model_names))], np.uint8)
    truth = np.full(256, VOID, np.uint8)
    for d, m in found.items():
        truth[d] = scored[m] if m is not None else rest
    unmatched = tuple(data_names[d] for d, m in found.items() if m is None)
    return ClassMatch(tuple(names), truth, predicted,
                      pairs=tuple((data_names[d], model_names[m]) for d, m in found.items()
                                  if m is not None),
                      rest=unmatched if rest != VOID else (),
                      void=unmatched if rest == VOID else (),
                      rest_name=None if rest == VOID else names[rest],
                      merged=tuple(model_names[m] for m in merged))
