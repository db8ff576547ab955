"""The shape of every JSON file the project writes and reads back, as JSON Schemas: the
manifest.json of a model or checkpoint folder, fcn.json, card.json, and a run's metrics.json,
config.json, split.json and crossval.json record. files.read_json(path, kind=KIND) checks a
file against its schema as it reads it, so that a file of another shape is one line naming the
file, the JSON path of the first wrong field and what to do, not a traceback where the code
first trips over it.

Each schema says what the readers then rely on (types, required keys, ranges, and, in CHECKS,
lengths that must agree) and allows what the project's writers wrote, earlier versions
included; keys it does not know are allowed. Whole numbers are Python ints: jsonschema's own
`integer` takes 2.0, which a shape or a count cannot be.
"""
import functools
import json
import re

import jsonschema

from roadseg import cli
from roadseg.errors import UserError

# ----------------------------------------------------------------------------------------------
# The parts
# ----------------------------------------------------------------------------------------------

TEXT = {'type': 'string'}
NUMBER = {'type': 'number'}
FIGURE = {'type': ['number', 'null']}  # a metric of a class that did not occur is null
COUNT = {'type': 'integer', 'minimum': 0, 'maximum': 2 ** 63 - 1}  # bytes, pixels: int64
EPOCH = {'type': 'integer', 'minimum': 1}
NAMES = {'type': 'array', 'items': TEXT}
OPTIONAL_TEXT = {'type': ['string', 'null']}
# A path inside the folder that a manifest lists: not absolute, no `..`, no NUL byte
INSIDE = {'type': 'string', 'pattern': r'(?s)^(?!/)(?!(?:.*/)?\.\.(?:/|$))[^\x00]+\Z',
          'description': 'a path inside the folder (not absolute, no "..")'}
MANIFEST = {
    'type': 'object', 'required': ['files'],
    'properties': {'files': {
        'type': 'object', 'propertyNames': INSIDE,
        'additionalProperties': {
            'type': 'object', 'required': ['bytes', 'sha256'],
            'properties': {'bytes': COUNT,
                           'sha256': {'type': 'string', 'pattern': r'^[0-9a-f]{64}\Z',
                                      'description': '64 lowercase hexadecimal digits'}}}}}}
# KITTI's MaxF and AP of one category: both figures, or neither (no road in the labels)
KITTI_FIGURES = {'type': 'object', 'required': ['max_f', 'average_precision'],
                 'properties': {'max_f': FIGURE, 'average_precision': FIGURE},
                 'if': {'properties': {'max_f': NUMBER}},
                 'then': {'properties': {'average_precision': NUMBER}}}
# metrics.ConfusionMatrix.results, as evaluation.summary_line and crossval.summarise read it;
# a road model's road IoU is its key metric, so a number
RESULTS = {'type': 'object', 'required': ['iou', 'mean_iou', 'pixel_accuracy', 'confusion'],
           'properties': {
               'iou': {'type': 'array', 'minItems': 1, 'maxItems': 255, 'items': FIGURE},
               'mean_iou': NUMBER, 'pixel_accuracy': NUMBER,
               'confusion': {'type': 'array', 'items': {'type': 'array', 'items': COUNT}},
               'kitti_road': KITTI_FIGURES,
               'bev': {'type': 'object', 'properties': {'categories': {
                   'type': 'object', 'additionalProperties': KITTI_FIGURES}}}},
           'if': {'properties': {'iou': {'minItems': 2, 'maxItems': 2}}},
           'then': {'properties': {'iou': {'prefixItems': [True, NUMBER]}}}}
# One epoch of a run (monitoring.RunMonitor.epoch_end); plot.py draws from them
RECORD = {'type': 'object', 'required': ['epoch', 'train_loss'],
          'properties': {'epoch': EPOCH, 'train_loss': NUMBER, 'seconds': NUMBER,
                         'key_metric': NUMBER, 'val': RESULTS, 'seen': RESULTS}}
# A record a resumed run goes on from: its best epoch's validation is logged again
RESUMED_RECORD = {**RECORD, 'dependentRequired': {'key_metric': ['val']}}


def _metrics(record):
    """A metrics.json whose epochs are `record`s."""
    return {'type': 'object', 'required': ['epochs'],
            'properties': {'epochs': {'type': 'array', 'items': record},
                           'best_epoch': {'type': ['integer', 'null'], 'minimum': 1}}}


# A validated epoch of a cross-validation's summary (training.crossval.summarise)
CROSSVAL_ROW = {'type': 'object', 'required': ['epoch', 'mean', 'std'],
                'properties': {'epoch': EPOCH, 'mean': NUMBER, 'std': NUMBER}}
SHAPE = {'type': 'array', 'minItems': 2, 'maxItems': 2,
         'items': {'type': 'integer', 'minimum': 32, 'maximum': 16384, 'multipleOf': 32},
         'description': '[height, width], multiples of 32'}
COLOR = {'type': 'array', 'minItems': 3, 'maxItems': 3,
         'items': {'type': 'integer', 'minimum': 0, 'maximum': 255},
         'description': '[red, green, blue], each from 0 to 255'}

# ----------------------------------------------------------------------------------------------
# The files: {kind: (schema, what to do about a file of another shape)}
# ----------------------------------------------------------------------------------------------

KINDS = {
    # a model folder's, or the file exports' (files.write_manifest)
    'manifest': (MANIFEST, 'the folder is damaged: copy or write it again'),
    # a checkpoint's: the manifest, its epoch, and every record up to it (checkpoints.save)
    'checkpoint': ({**MANIFEST, 'properties': {
        **MANIFEST['properties'], 'epoch': EPOCH,
        'records': {'type': 'array', 'items': RESUMED_RECORD}}},
        'the checkpoint is damaged'),
    # the model's training size and classes (roadseg.model_info.ModelInfo), as written before
    # too: every option, those that do not apply to the model included (reading drops them)
    'fcn': ({'type': 'object',
             'required': ['image_shape', 'num_classes', 'class_names', 'class_colors'],
             'properties': {
                 'image_shape': SHAPE,
                 'num_classes': {'type': 'integer', 'minimum': 1, 'maximum': 255},
                 'class_names': NAMES, 'class_colors': {'type': 'array', 'items': COLOR},
                 'encoder': TEXT, 'decoder': OPTIONAL_TEXT, 'alpha': NUMBER,
                 'depth': {'type': ['integer', 'null']}, 'dataset': TEXT,
                 'label': OPTIONAL_TEXT, 'classes': OPTIONAL_TEXT, 'remap': OPTIONAL_TEXT,
                 'epoch': {'type': ['integer', 'null']}, 'val_iou': FIGURE}},
            'keep the fcn.json that main.py or export.py wrote with the model'),
    # a shipped model's card (zoo.card), which roadseg/shipped/README.md is made from
    'card': ({'type': 'object',
              'required': ['task', 'command', 'commit', 'trained_on', 'quality', 'input_size',
                           'classes', 'megabytes', 'speed', 'licence'],
              'properties': {
                  'task': TEXT, 'command': TEXT, 'commit': OPTIONAL_TEXT, 'trained_on': TEXT,
                  'quality': {'type': 'object', 'required': ['crossval', 'int8'],
                              'properties': {'crossval': TEXT, 'int8': TEXT, 'val': TEXT}},
                  'input_size': TEXT, 'classes': NAMES, 'megabytes': NUMBER, 'speed': TEXT,
                  'licence': TEXT}},
             'rebuild the shipped model with python export.py --model RUN --ship NAME'),
    # a run's epochs (monitoring.RunMonitor.write_metrics)
    'metrics': (_metrics(RECORD), 'not the metrics.json of a run of main.py'),
    # the same, for a run resumed from a checkpoint written before checkpoints held records
    'resumed metrics': (_metrics(RESUMED_RECORD), 'not the metrics.json of a run of main.py'),
    # a run's options (training.run.save_config): those the readers of a run use
    'config': ({'type': 'object',
                'properties': {
                    'data_dir': TEXT, 'dataset': TEXT, 'epochs': EPOCH,
                    'batch_size': {'type': 'integer', 'minimum': 1},
                    'image_shape': {'type': 'string', 'pattern': r'^\d+x\d+\Z',
                                    'description': 'HxW, e.g. 352x480'},
                    'train_crop': {'type': ['string', 'null'], 'pattern': r'^\d+x\d+\Z',
                                   'description': 'HxW, e.g. 256x352, or null'},
                    'encoder': TEXT, 'decoder': OPTIONAL_TEXT, 'depth': {'type': 'integer'},
                    'ema_decay': {'type': ['number', 'null']},
                    'all_labelled': {'type': ['boolean', 'null']},
                    'val_groups': OPTIONAL_TEXT, 'command': OPTIONAL_TEXT,
                    'commit': OPTIONAL_TEXT},
                'if': {'properties': {'encoder': {'const': 'tiramisu'}},
                       'required': ['encoder']},
                'then': {'required': ['depth']}},
               'not the config.json of a run of main.py'),
    # what a final model's run records of the cross-validation behind it (crossval.expected)
    'crossval record': ({'type': 'object', 'required': ['best', 'folds'],
                         'properties': {'best': CROSSVAL_ROW,
                                        'at_epochs': {**CROSSVAL_ROW, 'type': ['object', 'null']},
                                        'folds': {'type': 'object'}}},
                        'not the crossval.json that main.py --crossval records in a run'),
    # the images of a run's sets (training.run.start_run)
    'split': ({'type': 'object',
               'properties': {'train': NAMES, 'val': NAMES, 'seen': NAMES,
                              'groups': {'type': 'object'}}},
              'not the split.json of a run of main.py'),
}


def _fcn_lengths(info):
    """fcn.json names and colours one class each."""
    for key in ('class_names', 'class_colors'):
        if len(info[key]) != info['num_classes']:
            return [key], f'has {len(info[key])} items but num_classes is {info["num_classes"]}'
    return None


def _square_confusion(metrics, records='epochs'):
    """Each evaluation's confusion matrix is classes x classes, its classes those of its IoU."""
    for index, record in enumerate(metrics.get(records, [])):
        for key in ('val', 'seen'):
            results = record.get(key, {})
            size, confusion = len(results.get('iou', [])), results.get('confusion')
            if confusion is not None and (len(confusion) != size or
                                          any(len(row) != size for row in confusion)):
                return ([records, index, key, 'confusion'],
                        f'is not {size}x{size}, as its {size} IoU figures say')
    return None


# What JSON Schema cannot say: {kind: [check(value) -> (JSON path, problem) or None]}
CHECKS = {'fcn': [_fcn_lengths], 'metrics': [_square_confusion],
          'resumed metrics': [_square_confusion],
          'checkpoint': [functools.partial(_square_confusion, records='records')]}

# ----------------------------------------------------------------------------------------------
# Checking
# ----------------------------------------------------------------------------------------------

Validator = jsonschema.validators.extend(
    jsonschema.Draft202012Validator,
    type_checker=jsonschema.Draft202012Validator.TYPE_CHECKER.redefine(
        'integer', lambda checker, value: isinstance(value, int) and not isinstance(value, bool)))


@functools.lru_cache(maxsize=None)
def _validator(kind, needs):
    schema = KINDS[kind][0]
    if needs:
        schema = {**schema, 'required': sorted(set(schema.get('required', [])) | set(needs))}
    return Validator(schema)


def problem(value, kind, needs=()):
    """What is wrong with the JSON `value` as a file of `kind` (with the top-level keys `needs`
    required too, those its reader uses), in words: the JSON path of the first wrong field and
    what it should be; None when nothing is."""
    error = jsonschema.exceptions.best_match(_validator(kind, tuple(sorted(needs)))
                                             .iter_errors(value))
    if error is not None:
        return _describe(error)
    for check in CHECKS.get(kind, []):
        found = check(value)
        if found:
            return f'{json_path(found[0])} {found[1]}'
    return None


def check(value, kind, path, hint=None, needs=()):
    """`value`, read from `path`, if it has the shape of a file of `kind` (problem); else a
    UserError in one line naming the file, the field and what to do (`hint`, or the kind's)."""
    found = problem(value, kind, needs)
    if found:
        raise UserError(f'{path}: {found}; {hint or KINDS[kind][1]}')
    return value


IDENTIFIER = re.compile(r'[A-Za-z_][A-Za-z0-9_]*\Z')


def json_path(parts):
    """The JSON path of a field, e.g. `$.epochs[0].val` or `$.files["fcn.json"].bytes`; keys
    are quoted as JSON strings, so that a path stays one line whatever they hold."""
    return '$' + ''.join(f'[{part}]' if isinstance(part, int) else
                         f'.{part}' if IDENTIFIER.match(part) else f'[{json.dumps(part)}]'
                         for part in parts)


TYPES = {'number': 'a number', 'integer': 'a whole number', 'string': 'text',
         'boolean': 'true or false', 'null': 'null', 'array': 'a list', 'object': 'an object'}


def _shown(value, limit=40):
    """A JSON value in one short line."""
    text = json.dumps(value)
    return text if len(text) <= limit else text[:limit - 3] + '...'


def _describe(error):
    """A jsonschema error in words: where, what is there and what should be."""
    where, value, rule = json_path(error.absolute_path), error.instance, error.validator
    if rule == 'required' or rule == 'dependentRequired':
        wanted = error.validator_value
        if rule == 'dependentRequired':
            wanted = next(needed for key, needed in wanted.items() if key in value)
        missing = next(key for key in wanted if key not in value)
        return f'{where} has no {json.dumps(missing)}'
    if 'propertyNames' in error.absolute_schema_path:  # `value` is a key of the object there
        return f'{where} has the key {_shown(value)}; a key must be {error.schema["description"]}'
    if 'description' in error.schema:
        expected = error.schema['description']
    elif rule == 'type':
        types = error.validator_value
        expected = ' or '.join(TYPES[t] for t in ([types] if isinstance(types, str) else types))
    elif rule in ('minItems', 'maxItems'):
        count = len(value)
        return (f'{where} has {count} item{"s" * (count != 1)}; it must have '
                f'{"at least" if rule == "minItems" else "at most"} {error.validator_value}')
    elif rule in ('minimum', 'maximum', 'multipleOf'):
        expected = {'minimum': 'at least', 'maximum': 'at most',
                    'multipleOf': 'a multiple of'}[rule] + f' {error.validator_value}'
    elif rule == 'const':
        expected = _shown(error.validator_value)
    else:  # a rule the schemas above do not use: jsonschema's words
        return f'{where}: {cli.one_line(error.message)[:120]}'
    return f'{where} is {_shown(value)}; it must be {expected}'
