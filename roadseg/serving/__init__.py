"""serve.py's HTTP service: any model the project writes behind TensorFlow Serving's REST API,
a PNG endpoint, a page to try it in a browser, health and Prometheus metrics.

    errors      RequestFailed, how a request is refused
    batcher     concurrent requests' images gathered into one model call
    limits      what a client can make the server read, hold or wait on, bounded
    protocol    TensorFlow Serving's requests parsed and answers built
    service     the model, its batcher and the request handling behind the app
    app         the FastAPI app: create_app, routes, errors, metrics
"""
from roadseg.serving.app import create_app

__all__ = ['create_app']
