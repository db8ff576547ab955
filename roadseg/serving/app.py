"""serve.py's FastAPI app: the Service's endpoints under TensorFlow Serving's REST paths, /segment,
the page (page.html, beside this module), /healthz and /metrics; every request counted and
timed, every failure answered with one JSON line. A client that goes away mid-request is counted
under status 499, nginx's "client closed request", not as a server error.

    create_app(model, max_batch=8, batch_timeout_ms=5, max_pixels=40_000_000,
               crf_parameters=None, max_body_bytes=MAX_BODY_BYTES,
               max_answer_bytes=MAX_ANSWER_BYTES)
"""
import contextlib
import json
import os
import sys
import time
import traceback

import prometheus_client
from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse, Response
from starlette.concurrency import run_in_threadpool
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect

from roadseg import cli, crf, images, inference
from roadseg.errors import UserError
from roadseg.serving.errors import RequestFailed, first_line
from roadseg.serving.limits import MAX_ANSWER_BYTES, MAX_BODY_BYTES, BodyLimit, too_large
from roadseg.serving.protocol import MODEL_NAME, model_status
from roadseg.serving.service import Service

PAGE = os.path.join(os.path.dirname(os.path.abspath(__file__)), 'page.html')
DISCONNECTED = 499  # the status a request whose client went away is counted under


def create_app(model, max_batch=8, batch_timeout_ms=5.0, max_pixels=40_000_000,
               crf_parameters=None, max_body_bytes=MAX_BODY_BYTES,
               max_answer_bytes=MAX_ANSWER_BYTES, model_name=MODEL_NAME):
    """The FastAPI app serving `model` (an inference.Model, closed when the app stops) as
    `model_name` in TensorFlow Serving's URLs, its answers refined by a dense CRF of
    `crf_parameters` (crf.read_parameters) when given."""
    service = Service(model, max_batch, batch_timeout_ms, max_pixels, crf_parameters,
                      max_body_bytes, max_answer_bytes, model_name)
    with open(PAGE, encoding='utf-8') as f:  # the page asks for the model by its name
        page = f.read().replace('/v1/models/fcn/', f'/v1/models/{model_name}/')
    app = FastAPI(title='FCN road segmentation', lifespan=_lifespan(service), docs_url=None,
                  redoc_url=None, openapi_url=None)
    app.state.service = service
    _answer_failures(app)
    app.add_middleware(BodyLimit, max_bytes=max_body_bytes)  # inside measure: counted
    _measure_requests(app, service)
    _add_model_routes(app, service)
    _add_page_and_probes(app, service, page)
    return app


def _lifespan(service):
    """The app's lifespan: the batcher started and the CRF's workers warmed up before the first
    request; after the last, the batcher stopped, the workers and the model closed."""
    refiner = service.refiner

    @contextlib.asynccontextmanager
    async def lifespan(app):
        service.batcher.start()
        if refiner is not None:
            await run_in_threadpool(refiner.warm_up)
        try:
            yield
        finally:
            await service.batcher.stop()
            if refiner is not None:
                refiner.close()
            service.model.close()
    return lifespan


def _answer_failures(app):
    """Answer each kind of failure with its status and {"error": one line}."""
    @app.exception_handler(RequestFailed)
    async def request_failed(request, e):
        return JSONResponse({'error': cli.one_line(e)}, e.status)

    @app.exception_handler(crf.RefineFailed)
    async def refine_failed(request, e):  # one line for the operator and the client
        print(f'{request.method} {request.url.path}: {e}', file=sys.stderr, flush=True)
        return JSONResponse({'error': str(e)}, 500)

    @app.exception_handler(UserError)
    async def bad_image(request, e):  # what images.decode_rgb says of the bytes
        return JSONResponse({'error': cli.one_line(e)},
                            413 if isinstance(e, images.TooLarge) else 400)

    @app.exception_handler(HTTPException)
    async def http_error(request, e):
        message = e.detail
        if e.status_code == 404:
            message = (f'no endpoint {request.url.path}; see GET / and GET '
                       f'/v1/models/{app.state.service.name}/metadata')
        elif e.status_code == 405:
            message = f'{request.method} is not allowed on {request.url.path}'
        return JSONResponse({'error': cli.one_line(message)}, e.status_code)


def _measure_requests(app, service):
    """The outermost middleware: the service's request counts and latencies."""
    @app.middleware('http')
    async def measure(request, call_next):
        """Count and time every request; answer an unexpected failure 500 with one JSON line
        (the traceback goes to the server's log, not to the client). A client that went away
        before its request was read is no failure: DISCONNECTED, and no one to answer."""
        start = time.perf_counter()
        try:
            response = too_large(request.scope) or await call_next(request)
        except ClientDisconnect:
            response = Response(status_code=DISCONNECTED)
        except Exception as e:
            traceback.print_exc(file=sys.stderr)
            response = JSONResponse(
                {'error': f'internal error: {type(e).__name__}: {first_line(e)}'}, 500)
        route = request.scope.get('route')
        endpoint = route.path if route is not None else 'other'
        service.requests.labels(endpoint, str(response.status_code)).inc()
        service.latency.labels(endpoint).observe(time.perf_counter() - start)
        return response


def _add_model_routes(app, service):
    """The model's endpoints: TensorFlow Serving's predict (by version too), status and
    metadata, and /segment's PNG."""
    @app.post('/v1/models/{name}:predict')
    async def predict(request: Request, name: str):
        return await service.predict(request, name)

    @app.post('/v1/models/{name}/versions/{version}:predict')
    async def predict_version(request: Request, name: str, version: str):
        return await service.predict(request, name, version)

    @app.get('/v1/models/{name}')
    async def status(name: str):
        return model_status(name, service.name)

    @app.get('/v1/models/{name}/metadata')
    async def metadata(name: str):
        return service.metadata(name)

    @app.post('/segment')
    async def segment(request: Request):
        return await service.segment_png(request)


def _add_page_and_probes(app, service, page):
    """The page to try the model in a browser, the health probe and Prometheus' metrics."""
    refiner = service.refiner

    @app.get('/')
    async def index():
        return HTMLResponse(page)

    @app.get('/healthz')
    async def healthz():
        """ok, or 503 when the dense CRF's workers cannot run; `crf` is the pool's state
        (crf.IsolatedRefiner.state, which replaces a broken pool), null without one."""
        pool = None if refiner is None else await run_in_threadpool(refiner.state)
        ready = pool is None or pool['ready']
        return JSONResponse({'status': 'ok' if ready else 'unavailable', 'model': service.name,
                             'format': service.model.kind, 'crf': pool}, 200 if ready else 503)

    @app.get('/metrics')
    async def prometheus():
        return Response(prometheus_client.generate_latest(service.registry),
                        media_type=prometheus_client.CONTENT_TYPE_LATEST)


def app_from_environment():
    """The app for one of uvicorn's worker processes (serve.py --workers N): the model and
    settings serve.py put in ROADSEG_SERVE, loaded in this process."""
    settings = json.loads(os.environ['ROADSEG_SERVE'])
    path = settings.pop('crf')
    return create_app(inference.load_model(settings.pop('model')), **settings,
                      crf_parameters=crf.parameters_for(path))
