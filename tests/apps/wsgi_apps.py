"""WSGI apps for the command-line tests (`--interface auto|wsgi`, `--workers`)."""

import os
import threading
import time

ERRORS_TEXT = 'Traceback (most recent call last):\n  File "view.py"\nValueError: from the app\n'


def app(environ, start_response):
    """Answers with the worker's pid and the thread that ran the call; /stuck never answers,
    /errors writes a traceback to wsgi.errors first."""
    if environ["PATH_INFO"] == "/errors":
        environ["wsgi.errors"].write(ERRORS_TEXT)
    if environ["PATH_INFO"] == "/stuck":
        with open(os.environ["ASERVE_TEST_STUCK_MARK"], "w") as mark:
            mark.write("in the call")
        time.sleep(600)
    body = f"{os.getpid()} {threading.current_thread().name} {environ['PATH_INFO']}".encode()
    start_response("200 OK", [("Content-Type", "text/plain"), ("Content-Length", str(len(body)))])
    return [body]


class ClassApp:
    """PEP 3333's other form: a class, whose instance is the response iterable."""

    def __init__(self, environ, start_response):
        self.start_response = start_response

    def __iter__(self):
        self.start_response("200 OK", [("Content-Type", "text/plain")])
        yield b"from a class"


def _flask_app():
    from flask import Flask

    flask_app = Flask(__name__)

    @flask_app.get("/x")
    def index():
        return f"flask {os.getpid()}"

    return flask_app


flask_app = _flask_app()
