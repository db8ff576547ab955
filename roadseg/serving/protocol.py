"""TensorFlow Serving's REST protocol as the service speaks it: the model's name and signatures,
a predict request's JSON parsed and checked by TensorFlow Serving's rules (images as
{"b64": ...} or [H][W][3] arrays, row or columnar format), /segment's query and body, and the
answers built: predictions, status, metadata, and the length of a JSON answer known before it
is built. Nothing here touches the model; a bad request is a RequestFailed.
"""
import base64
import binascii
import json

import numpy as np
from starlette.requests import ClientDisconnect

from roadseg import cli
from roadseg.serving.errors import RequestFailed, first_line

MODEL_NAME, MODEL_VERSION = 'fcn', '1'  # the name of a model that is not a shipped one
SEGMENT_OUTPUTS = ('overlay', 'mask', 'probability')
SEGMENT_QUERY = ('output', 'crop', 'flip_tta')
RAW_TYPES = ('', 'application/octet-stream')  # and image/*: a raw image body
# TensorFlow Serving's predict API: signature_name -> {output: dtype}. serving_default answers
# what export.py's SavedModel answers under TensorFlow Serving; the others are smaller answers.
# Outputs named *_bytes come back as {"b64": ...}, TensorFlow Serving's convention for bytes.
SIGNATURES = {'serving_default': {'probabilities': 'DT_FLOAT', 'classes': 'DT_UINT8'},
              'classes': {'classes': 'DT_UINT8'},
              'road_probability': {'road_probability': 'DT_FLOAT'},
              'mask_png': {'mask_bytes': 'DT_STRING'},
              'probability_png': {'probability_bytes': 'DT_STRING'},
              'overlay_png': {'overlay_bytes': 'DT_STRING'}}
ROAD_ONLY = ('road_probability', 'probability_png', 'probability')
MAX_IMAGES = 64  # images in one predict request
DECIMALS = 4  # probabilities in JSON: float32 noise beyond this only lengthens the answer


def parse_predict(body):
    """A TensorFlow Serving predict request: (signature name, columnar or not, the images'
    payloads: encoded bytes or uint8 arrays), checked by TensorFlow Serving's rules: a list of
    instances, each {"b64": ...} or an [H][W][3] array of whole numbers 0..255, the arrays of
    one shape."""
    try:
        request = json.loads(body)
    except (ValueError, UnicodeDecodeError) as e:
        raise RequestFailed(400, f'malformed JSON ({e}); send {{"instances": [{{"b64": '
                                 f'"<base64 JPEG or PNG>"}}]}}') from None
    except RecursionError:
        raise RequestFailed(400, 'the JSON is nested too deeply; an image is {"b64": ...} or '
                                 'an [H][W][3] array') from None
    if not isinstance(request, dict):
        raise RequestFailed(400, 'the request is not a JSON object; send {"instances": [...]} '
                                 'or {"inputs": ...}')
    unknown = sorted(set(request) - {'signature_name', 'instances', 'inputs'})
    if unknown:
        raise RequestFailed(400, f'unknown key {unknown[0]!r}; a request has "instances" or '
                                 f'"inputs", and optionally "signature_name"')
    if ('instances' in request) == ('inputs' in request):
        raise RequestFailed(400, 'a request has exactly one of "instances" (row format) and '
                                 '"inputs" (columnar format)')
    signature = request.get('signature_name', 'serving_default')
    if not isinstance(signature, str) or signature not in SIGNATURES:
        raise RequestFailed(400, f'signature_name {json.dumps(signature)} not found; choose '
                                 f'from {", ".join(SIGNATURES)}')
    columnar = 'inputs' in request
    values = request['inputs'] if columnar else request['instances']
    where = 'inputs' if columnar else 'instances'
    if columnar and isinstance(values, dict):
        if 'b64' in values:
            values = [values]  # the one image of a batch of one
        elif set(values) != {'image'}:
            raise RequestFailed(400, f'inputs has keys {sorted(values)}; the only input is '
                                     f'"image"')
        else:
            values, where = values['image'], 'inputs.image'
    if not isinstance(values, list) or not values:
        raise RequestFailed(400, f'{where} must be a non-empty list of images')
    if len(values) > MAX_IMAGES:
        raise RequestFailed(413, f'{where} holds {len(values)} images, over the limit of '
                                 f'{MAX_IMAGES} a request; send them in several requests')
    payloads = [_payload(value, f'{where}[{i}]') for i, value in enumerate(values)]
    first = payloads[0]
    for i, payload in enumerate(payloads[1:], 1):
        if isinstance(payload, np.ndarray) != isinstance(first, np.ndarray) or \
                isinstance(first, np.ndarray) and payload.shape != first.shape:
            raise RequestFailed(400, f'{where}[{i}] is {_kind(payload)} but {where}[0] is '
                                     f'{_kind(first)}; the images of a request are all '
                                     f'{{"b64": ...}} or all arrays of one shape')
    return signature, columnar, payloads


def _kind(payload):
    """What an instance was sent as, for messages."""
    if isinstance(payload, np.ndarray):
        return f'an array of shape {_shape(payload.shape)}'
    return 'an encoded image'


def _shape(shape):
    return ''.join(f'[{size}]' for size in shape) or 'a single value'


def _payload(value, where):
    """One instance: {"b64": ...}, {"image": ...} or an [H][W][3] array (_pixels)."""
    if isinstance(value, dict):
        if set(value) == {'image'}:
            return _payload(value['image'], where + '.image')
        if set(value) != {'b64'}:
            raise RequestFailed(400, f'{where} has keys {sorted(value)}; an image is '
                                     f'{{"b64": "<base64 JPEG or PNG>"}} or an [H][W][3] array')
        try:
            return base64.b64decode(value['b64'], validate=True)
        except (binascii.Error, TypeError, ValueError):
            raise RequestFailed(400, f'{where}.b64 does not decode as base64') from None
    if not isinstance(value, list):
        raise RequestFailed(400, f'{where} is {json.dumps(value)[:40]}, neither {{"b64": ...}} '
                                 f'nor an [H][W][3] array of whole numbers 0..255')
    return _pixels(value, where)


def _pixels(value, where):
    """Nested lists as a uint8 [H][W][3] image, by TensorFlow Serving's rules for a uint8
    tensor: rectangular, of rank 3 with 3 channels, every value a whole number from 0 to 255
    (no booleans, fractions, NaN or text); else a 400 naming the instance and the problem."""
    try:
        pixels = np.array(value, dtype=object)
    except (ValueError, TypeError, RecursionError):
        raise RequestFailed(400, f'{where} is not a rectangular [H][W][3] array') from None
    kinds = np.frompyfunc(type, 1, 1)(pixels)
    if (kinds == list).any():  # noqa: E721  (element-wise, over an array of types)
        raise RequestFailed(400, f'{where} is ragged or nested deeper than [H][W][3]: its rows '
                                 f'must all hold the same number of values')
    if pixels.ndim != 3 or pixels.shape[-1] != 3 or not pixels.size:
        raise RequestFailed(400, f'{where} has shape {_shape(pixels.shape)}; an instance is '
                                 f'one image, an [H][W][3] array')
    bad = kinds != int  # noqa: E721  (element-wise) bool, float, str, None and dict are all refused
    if bad.any():
        index = tuple(int(i) for i in np.argwhere(bad)[0])
        raise RequestFailed(400, f'{where}{_shape(index)} is {_describe(pixels[index])}; pixel '
                                 f'values are whole numbers from 0 to 255')
    outside = (pixels < 0) | (pixels > 255)
    if outside.any():
        index = tuple(int(i) for i in np.argwhere(outside)[0])
        raise RequestFailed(400, f'{where}{_shape(index)} is {str(pixels[index])[:20]}, outside '
                                 f'0..255')
    return pixels.astype(np.uint8)


def _describe(value):
    """A JSON value that is not a pixel value, for messages."""
    if isinstance(value, bool):
        return f'the boolean {json.dumps(value)}'
    if isinstance(value, float):
        return 'NaN' if value != value else f'{value!r}, not written as a whole number' \
            if abs(value) != float('inf') else 'infinite'
    return {str: 'text', type(None): 'null', dict: 'an object'}.get(type(value), 'not a number')


def _bool(text, name):
    if text.lower() in ('1', 'true', 'yes'):
        return True
    if text.lower() in ('0', 'false', 'no', ''):
        return False
    raise RequestFailed(400, f'{name}={text[:40]}: use 1 or 0')


def segment_options(query):
    """/segment's query: (output, crop (TOP, BOTTOM) or None, flip)."""
    unknown = sorted(set(query) - set(SEGMENT_QUERY))
    if unknown:
        raise RequestFailed(400, f'unknown query parameter {unknown[0]!r}; use '
                                 f'{", ".join(SEGMENT_QUERY)}')
    output = query.get('output', 'overlay')
    if output not in SEGMENT_OUTPUTS:
        raise RequestFailed(400, f'output={output[:40]}: choose from '
                                 f'{", ".join(SEGMENT_OUTPUTS)}')
    crop = None
    if 'crop' in query:
        try:
            crop = cli.crop_arg(query['crop'])
        except Exception as e:  # argparse.ArgumentTypeError
            raise RequestFailed(400, f'crop={e}') from None
    return output, crop, _bool(query.get('flip_tta', '0'), 'flip_tta')


async def upload(request):
    """The image bytes of a /segment request and a name for messages: a multipart upload's
    first file, or the raw body."""
    kind = request.headers.get('content-type', '').split(';')[0].strip().lower()
    if kind == 'multipart/form-data':
        try:
            form = await request.form()
        except (ClientDisconnect, RequestFailed):  # gone, or over the body limit
            raise
        except Exception as e:  # python-multipart's errors for a malformed body
            raise RequestFailed(400, f'malformed multipart body ({first_line(e)})') from None
        try:
            uploads = [value for value in form.values() if hasattr(value, 'filename')]
            if not uploads:
                raise RequestFailed(400, 'multipart body without a file; send the image as a '
                                         'file field (curl -F image=@photo.jpg)')
            return await uploads[0].read(), uploads[0].filename or 'the upload'
        finally:
            await form.close()
    if kind in RAW_TYPES or kind.startswith('image/'):
        return await request.body(), 'the body'
    raise RequestFailed(415, f'content type {kind!r} not supported; send the image as '
                             f'image/jpeg, image/png, application/octet-stream or '
                             f'multipart/form-data')


def check_servable(name, served, version=None):
    """Refuse (404) a model name or version in the URL other than this server's (`served`)."""
    if name != served or version not in (None, MODEL_VERSION):
        which = f'version {version} of ' if version else ''
        raise RequestFailed(404, f'no {which}model {name!r}; this server serves '
                                 f'{served!r}, version {MODEL_VERSION}')


def model_status(name, served):
    """TensorFlow Serving's status answer of model `name`, which the server serves as
    `served`."""
    check_servable(name, served)
    return {'model_version_status': [{'version': MODEL_VERSION, 'state': 'AVAILABLE',
                                      'status': {'error_code': 'OK', 'error_message': ''}}]}


def model_metadata(name, served, num_classes, two_classes, fcn):
    """TensorFlow Serving's metadata answer of model `name` (served as `served`): the
    signatures a model of `num_classes` answers (the road-only ones for two-class models only),
    each taking an image's bytes, and the service's own details `fcn`."""
    check_servable(name, served)
    signatures = {
        signature: {
            'inputs': {'image': _tensor('DT_STRING', [-1], 'image')},
            'outputs': {output: _tensor(dtype, _output_shape(output, num_classes), output)
                        for output, dtype in outputs.items()},
            'method_name': 'tensorflow/serving/predict'}
        for signature, outputs in SIGNATURES.items()
        if two_classes or signature not in ROAD_ONLY}
    return {'model_spec': {'name': served, 'signature_name': '', 'version': MODEL_VERSION},
            'metadata': {'signature_def': {'signature_def': signatures}, 'fcn': fcn}}


def predict_answer(signature, columnar, outputs):
    """TensorFlow Serving's predict answer as JSON bytes, of each image's `outputs` ({output:
    JSON value}): predictions (row format) or outputs (columnar), a single output unwrapped as
    TensorFlow Serving does."""
    names = list(SIGNATURES[signature])
    if columnar:
        answer = {key: [values[key] for values in outputs] for key in names}
        body = {'outputs': answer[names[0]] if len(names) == 1 else answer}
    else:
        body = {'predictions': [values[names[0]] if len(names) == 1 else values
                                for values in outputs]}
    return json.dumps(body, separators=(',', ':')).encode()


def answer_bytes(signature, sizes, num_classes):
    """At least the length of the JSON answer of `signature` for images of `sizes` ((H, W)),
    known before it is built: a probability takes at most DECIMALS + 3 bytes ("0.1234,"), a
    class its digits and a comma, brackets 3 bytes a list ("[...],"), and each image's keys
    under 100; 0 for the PNG signatures, whose answers are small."""
    value, label = DECIMALS + 3, len(str(num_classes - 1)) + 1
    per_pixel = {'probabilities': num_classes * value + 3, 'classes': label,
                 'road_probability': value}
    outputs = [per_pixel[output] for output in SIGNATURES[signature] if output in per_pixel]
    if not outputs:
        return 0
    return sum(h * w * sum(outputs) + 3 * (h + 1) * len(outputs) + 100 for h, w in sizes)


def rounded(values):
    """Probabilities as JSON lists, rounded to DECIMALS (as float64: float32's nearest values
    print with 17 digits)."""
    return np.round(values.astype(np.float64), DECIMALS).tolist()


def _tensor(dtype, dims, name):
    """A TensorInfo as TensorFlow Serving's metadata writes it (-1: any size)."""
    return {'dtype': dtype, 'name': f'{name}:0', 'tensor_shape': {
        'dim': [{'size': str(size), 'name': ''} for size in dims], 'unknown_rank': False}}


def _output_shape(output, num_classes):
    return {'probabilities': [-1, -1, -1, num_classes], 'classes': [-1, -1, -1],
            'road_probability': [-1, -1, -1]}.get(output, [-1])
