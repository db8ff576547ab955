"""The model service behind the app: the model, its Batcher, the request handling and the
metrics.

Every image goes the way predict.py's do (inference.model_input, the model, inference.at_image_size,
drawing.overlay): decoded and resized in a worker thread, then queued for the Batcher, which
gathers concurrent requests into one model call (up to max_batch images, or what arrived within
batch_timeout_ms of the first), so the event loop never waits for the model. A predict request
whose JSON answer would be over max_answer_bytes is refused 413 before any image is decoded.

With crf_parameters the dense CRF runs in a worker process (crf.IsolatedRefiner): pydensecrf's
native code can crash or overrun on one image without taking the service down.
"""
import asyncio
import base64
import os
import re
import time

import numpy as np
import prometheus_client
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from roadseg import crf, drawing, images, inference, media, metrics
from roadseg.serving.batcher import Batcher
from roadseg.serving.errors import RequestFailed
from roadseg.serving.protocol import (
    ROAD_ONLY,
    SIGNATURES,
    answer_bytes,
    check_servable,
    model_metadata,
    parse_predict,
    predict_answer,
    rounded,
    segment_options,
    upload,
)

BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)


class Service:
    """The model, its batcher, the request handling and the metrics behind the app."""

    def __init__(self, model, max_batch, batch_timeout_ms, max_pixels, crf_parameters,
                 max_body_bytes, max_answer_bytes, name):
        self.model, self.max_pixels, self.max_answer_bytes = model, max_pixels, max_answer_bytes
        self.name = name  # the model's name in TensorFlow Serving's URLs
        self.refiner = None
        if crf_parameters is not None:  # at_image_size refines through the worker process
            model.refine = self.refiner = crf.IsolatedRefiner(crf_parameters)
        self.two_classes = metrics.is_road_model(model.num_classes)
        self.threshold = inference.default_threshold(model.num_classes)
        self.colors = drawing.overlay_colors(model.info.class_colors)
        self.registry = prometheus_client.CollectorRegistry()
        self.requests = prometheus_client.Counter(
            'fcn_requests', 'HTTP requests by endpoint and status code',
            ['endpoint', 'status'], registry=self.registry)
        self.latency = prometheus_client.Histogram(
            'fcn_request_seconds', 'Time from request to response, by endpoint', ['endpoint'],
            registry=self.registry)
        batch_sizes = prometheus_client.Histogram(
            'fcn_batch_size', 'Images per model call', buckets=BATCH_BUCKETS,
            registry=self.registry)
        self.batcher = Batcher(model, max_batch, batch_timeout_ms / 1000, batch_sizes)
        self.settings = {'max_batch': max_batch, 'batch_timeout_ms': batch_timeout_ms,
                         'max_pixels': max_pixels, 'max_body_bytes': max_body_bytes,
                         'max_answer_bytes': max_answer_bytes}

    # The pipeline: decode and resize (thread), model (batcher), resize back and draw (thread)

    def prepare(self, payload, name, crop):
        """(image, rows, model input) for encoded bytes or a pixel array."""
        if isinstance(payload, np.ndarray):
            image = payload
            images.check_pixels(image.shape[1], image.shape[0], name, self.max_pixels)
        else:
            image = images.decode_rgb(payload, name, self.max_pixels)
        rows = media.crop_rows(crop, image.shape[0], name)
        return image, rows, inference.model_input(image, rows, self.model.image_shape)

    async def segment(self, prepared, flip=False):
        """A prepared image and its class probabilities at its own size."""
        image, rows, small = prepared
        probabilities = await self.batcher(small, flip)
        return image, await run_in_threadpool(inference.at_image_size, self.model, image,
                                              probabilities, rows)

    def render(self, output, image, probabilities):
        """predict.py's outputs: the overlay, the class map or the 8-bit road probability."""
        if output == 'probability':
            return metrics.quantize(probabilities[..., 1])
        classes = inference.classes_of(probabilities, self.threshold)
        return classes if output == 'mask' else drawing.overlay(image, classes, self.colors)

    def check_road_only(self, name, what):
        """Refuse a road-only signature or /segment output `name` (asked for as `what`) when
        the model has more than two classes."""
        if name in ROAD_ONLY and not self.two_classes:
            raise RequestFailed(400, f'{what} is for two-class (road) models; this model has '
                                     f'{self.model.num_classes} classes')

    def signature_outputs(self, signature, image, probabilities):
        """One image's outputs under a predict signature, as JSON values."""
        values = {}
        for output in SIGNATURES[signature]:
            if output == 'probabilities':
                values[output] = rounded(probabilities)
            elif output == 'classes':
                values[output] = inference.classes_of(probabilities, self.threshold).tolist()
            elif output == 'road_probability':
                values[output] = rounded(probabilities[..., 1])
            else:
                png = images.encode_png(self.render(output[:-len('_bytes')], image,
                                                    probabilities))
                values[output] = {'b64': base64.b64encode(png).decode('ascii')}
        return values

    # Endpoints

    async def predict(self, request, name, version=None):
        check_servable(name, self.name, version)
        signature, columnar, payloads = await run_in_threadpool(parse_predict,
                                                                await request.body())
        self.check_road_only(signature, f'signature_name {signature!r}')
        where = 'inputs' if columnar else 'instances'
        self.check_answer_size(signature, [size for size in map(_size, payloads) if size])
        prepared = await asyncio.gather(*(run_in_threadpool(self.prepare, payload,
                                                            f'{where}[{i}]', None)
                                          for i, payload in enumerate(payloads)))
        segmented = await asyncio.gather(*(self.segment(p) for p in prepared))
        return Response(await run_in_threadpool(self.answer, signature, columnar, segmented),
                        media_type='application/json')

    def check_answer_size(self, signature, sizes):
        """Refuse a JSON answer that would be over max_answer_bytes (answer_bytes' estimate
        for images of `sizes`, (H, W)), before anything is decoded."""
        size = answer_bytes(signature, sizes, self.model.num_classes)
        if size > self.max_answer_bytes:
            what = f'a {sizes[0][1]}x{sizes[0][0]} image' if len(sizes) == 1 else \
                f'{len(sizes)} images of {sum(h * w for h, w in sizes) / 1e6:.3g} megapixels'
            raise RequestFailed(413, f'{signature} would answer up to {_mb(size)} of JSON for '
                                     f'{what}, over the limit of {_mb(self.max_answer_bytes)}; '
                                     f'ask for signature_name "mask_png" (a PNG of the classes; '
                                     f'"probability_png" for the road probability) or POST '
                                     f'the image to /segment?output=mask')

    def answer(self, signature, columnar, segmented):
        """TensorFlow Serving's answer of the `segmented` images as JSON bytes."""
        return predict_answer(signature, columnar,
                              [self.signature_outputs(signature, image, probabilities)
                               for image, probabilities in segmented])

    async def segment_png(self, request):
        output, crop, flip = segment_options(request.query_params)
        self.check_road_only(output, f'output={output}')
        data, name = await upload(request)
        start = time.perf_counter()
        prepared = await run_in_threadpool(self.prepare, data, name, crop)
        image, probabilities = await self.segment(prepared, flip)
        png = await run_in_threadpool(
            lambda: images.encode_png(self.render(output, image, probabilities)))
        stem = os.path.splitext(os.path.basename(name))[0] if name != 'the body' else 'image'
        stem = re.sub(r'[^A-Za-z0-9._-]', '_', stem)  # HTTP headers are Latin-1
        return Response(png, media_type='image/png', headers={
            'X-Inference-Ms': f'{1000 * (time.perf_counter() - start):.1f}',
            'X-Image-Size': f'{image.shape[1]}x{image.shape[0]}',
            'Content-Disposition': f'inline; filename="{stem}_{output}.png"'})

    def metadata(self, name):
        """TensorFlow Serving's metadata, the model's details and the service's settings under
        "fcn"."""
        info = self.model.info
        return model_metadata(name, self.name, info.num_classes, self.two_classes, {
            'format': self.model.kind,
            'image_shape': list(self.model.image_shape),
            'num_classes': info.num_classes,
            'class_names': list(info.class_names),
            'class_colors': [list(color) for color in info.class_colors],
            'overlay_colors': [list(c) if c else None for c in self.colors],
            **self.settings})


def _size(payload):
    """An image's (height, width) as it will be segmented, from its array or its file's header
    before anything is decoded; None when the header does not say (decoding then says what is
    wrong)."""
    if isinstance(payload, np.ndarray):
        return payload.shape[:2]
    return images.displayed_size(payload)


def _mb(size):
    return f'{size / 1e6:.3g} MB'
