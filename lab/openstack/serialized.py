"""WSGI wrapper for the lab's Keystone and Glance: one request at a time changes their sqlite databases.

sqlite has one writer; under gunicorn's threads two concurrent writes (an image upload finishing while
another image is created, a user changed while a token is issued) fail at once with "database is locked"
when a read transaction has to become a write one. Production runs these services on MySQL or PostgreSQL.
So every request except image data downloads runs under one lock; downloads (GET/HEAD of
`/v2/images/{id}/file`) only read and may take long, so they run beside the rest (the databases are in
WAL mode, so such reads never block the writer).

The wrapped application is named by LAB_WSGI_APP ("module:attribute").
"""

import importlib
import os
import threading

_module, _attribute = os.environ["LAB_WSGI_APP"].split(":")
_app = getattr(importlib.import_module(_module), _attribute)
_lock = threading.Lock()


def application(environ, start_response):
    if environ.get("REQUEST_METHOD") in ("GET", "HEAD") and environ.get("PATH_INFO", "").endswith("/file"):
        return _app(environ, start_response)
    with _lock:
        result = _app(environ, start_response)
        try:
            # The body is produced inside the lock: that is when the application touches its database.
            return [b"".join(result)]
        finally:
            close = getattr(result, "close", None)
            if close is not None:
                close()
