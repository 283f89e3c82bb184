"""moto's S3 server keeping HTTP/1.1 connections alive, as S3 does, for the benchmarks.

``python -m moto.server`` runs moto's WSGI app on werkzeug's development server, which
answers every request with ``Connection: close`` (werkzeug 2.1+ does so on purpose:
Python's ``http.server`` does not drain an unread request body before the next request
line, and after each answer it reads whatever the client sent next within 10 ms, to
throw it away). So each boto3 request would pay a new TCP connection on both sides,
and botocore a "dropped connection" reset, where real S3 keeps the connection for the
next request: a cost of the stand-in, not of Handover. This launcher runs the same app
(moto's own dispatcher and request handler) threaded, one thread per connection, with
a handler that keeps the connection open when the client asks for it: the body is read
to its ``Content-Length`` after the answer (what the app left of it), werkzeug's
throw-away read finds nothing, and the next request line is read as the next request.
A chunked body is read to its last chunk too; one that cannot be closes the connection.

Run: ``python benchmarks/moto_server.py PORT`` (listens on 127.0.0.1 until SIGTERM).
"""

from __future__ import annotations

import io
import signal
import sys
from types import FrameType
from typing import Any

from moto.moto_server.werkzeug_app import (
    DomainDispatcherApplication,
    MotoRequestHandler,
    create_backend_app,
)
from werkzeug.serving import DechunkedInput, make_server
from werkzeug.wsgi import LimitedStream


class KeepAliveHandler(MotoRequestHandler):
    """moto's request handler, without werkzeug's forced ``Connection: close``."""

    protocol_version = "HTTP/1.1"
    #: An answer's headers and body go out in separate writes: with Nagle's algorithm,
    #: on a connection kept open, the body would wait for the client's delayed ACK (40 ms).
    disable_nagle_algorithm = True
    _body: LimitedStream | DechunkedInput | None = None
    _connection_stream: Any = None

    def make_environ(self) -> dict[str, Any]:
        """moto's environ, with the body bounded so that what is left of it can be read."""
        environ: dict[str, Any] = super().make_environ()
        body = environ["wsgi.input"]
        if not isinstance(body, DechunkedInput):
            try:
                length = int(environ.get("CONTENT_LENGTH") or 0)
            except ValueError:  # no telling where the next request starts
                length, self.close_connection = 0, True
            body = LimitedStream(body, length)
            environ["wsgi.input"] = body
        self._body = body
        self._connection_stream, self.rfile = self.rfile, io.BytesIO()  # see run_wsgi
        return environ

    def send_header(self, keyword: str, value: str) -> None:
        """Every header but werkzeug's ``Connection: close``, unless the client asked for it."""
        closing = keyword.lower() == "connection" and value.lower() == "close"
        if closing and not self.close_connection:
            return
        super().send_header(keyword, value)

    def run_wsgi(self) -> None:
        """Answer the request, then read the rest of its body: the next request follows it.

        While the app runs, ``rfile`` is an empty stream (the app reads the body through
        its environ), so werkzeug's throw-away read after the answer finds nothing.
        """
        self._connection_stream = self.rfile
        try:
            super().run_wsgi()
        finally:
            self.rfile = self._connection_stream
        body, self._body = self._body, None
        if isinstance(body, LimitedStream):
            body.exhaust()
        elif body is not None:  # chunked: read to its last chunk, or close
            try:
                while body.read(1 << 16):
                    pass
            except OSError:
                self.close_connection = True


def _stop(signum: int, frame: FrameType | None) -> None:
    sys.exit(0)


def main(port: int) -> None:
    """Serve moto's S3 on 127.0.0.1:``port`` until SIGTERM or SIGINT."""
    signal.signal(signal.SIGTERM, _stop)
    signal.signal(signal.SIGINT, _stop)
    app = DomainDispatcherApplication(create_backend_app)
    server = make_server("127.0.0.1", port, app, threaded=True, request_handler=KeepAliveHandler)
    server.serve_forever()


if __name__ == "__main__":
    main(int(sys.argv[1]))
