"""A local Cloud Storage server for tests: ``python tests/gcs_emulator.py PORT DATA_DIR``.

``gcp-storage-emulator`` plus the two parts of the real service that TensorStore (Orbax's array store)
relies on and the emulator lacks: object generations in download headers (``x-goog-generation``) and the
generation preconditions of reads and writes (``ifGenerationMatch`` -> 412, ``ifGenerationNotMatch`` ->
304), which TensorStore's OCDBT format uses to update its manifest safely. Tests start it with
:func:`running`.
"""

import contextlib
import os
import socket
import subprocess
import sys
import time
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def running(data_dir):
    """Serves a bucket ``runs`` from ``data_dir`` on a free local port while the block runs, with the
    environment that points gcsfs, google-cloud-storage and TensorStore at it set in ``os.environ``; yields
    ``{"env": the environment for subprocesses, "fs": a gcsfs file system of the server, "url": its address}``."""
    import gcsfs

    port = _free_port()
    env = dict(os.environ)
    proc = subprocess.Popen([sys.executable, os.path.abspath(__file__), str(port), str(data_dir)], cwd=data_dir,
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=env)
    url = f"http://127.0.0.1:{port}"
    deadline = time.time() + 120  # a cold start on a loaded machine takes a while
    while True:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=1).close()
            break
        except OSError:
            if time.time() > deadline or proc.poll() is not None:
                proc.kill()
                raise RuntimeError(f"the storage emulator did not listen on port {port}") from None
            time.sleep(0.2)
    # gcsfs and google-cloud-storage (TensorBoard) read STORAGE_EMULATOR_HOST, TensorStore (Orbax's arrays)
    # TENSORSTORE_GCS_HTTP_URL; the bucket-type probe of newer gcsfs needs real gRPC endpoints. No credential
    # lookup may leave this machine: TensorStore takes a fixed test token, and google-auth's probe of the
    # cloud metadata server is switched off and, should anything still try it, pointed at a closed local port.
    overrides = {"STORAGE_EMULATOR_HOST": url, "TENSORSTORE_GCS_HTTP_URL": url,
                 "GCSFS_EXPERIMENTAL_ZB_HNS_SUPPORT": "false", "GOOGLE_AUTH_TOKEN_FOR_TESTING": "test",
                 "NO_GCE_CHECK": "True", "GCE_METADATA_HOST": "127.0.0.1:9", "GCE_METADATA_IP": "127.0.0.1:9",
                 "GOOGLE_CLOUD_PROJECT": "test"}
    old = {k: os.environ.get(k) for k in overrides}
    os.environ.update(overrides)
    # In this process gcsfs may have been imported before the environment above was set: URLs opened here
    # through fsspec (a corpus in the bucket) get the plain file system, not the bucket-type probing one.
    import fsspec
    registered = {scheme: fsspec.registry.get(scheme) for scheme in ("gs", "gcs")}
    for scheme in registered:
        fsspec.register_implementation(scheme, gcsfs.core.GCSFileSystem, clobber=True)
    try:
        # gcsfs read its environment when it was imported (before this block): the plain file system, and
        # the server named here.
        yield {"env": {**env, **overrides}, "url": url,
               "fs": gcsfs.core.GCSFileSystem(token="anon", endpoint_url=url, skip_instance_cache=True)}
    finally:
        for scheme, cls in registered.items():
            if cls is not None:
                fsspec.register_implementation(scheme, cls, clobber=True)
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
        proc.terminate()
        proc.wait(timeout=30)


def _generation(storage, bucket, name) -> str:
    try:
        return str(storage.get_file_obj(bucket, name)["generation"])
    except NotFound:
        return "0"


def _checked(fn, *, download: bool):
    def handler(request, response, storage, *args, **kwargs):
        is_download = download or (request.query.get("alt") or [""])[0] == "media"
        bucket = request.params.get("bucket_name")
        name = request.params.get("object_id") or (request.query.get("name") or [None])[0]
        if bucket and name:
            current = _generation(storage, bucket, name)
            match = request.query.get("ifGenerationMatch")
            if match and match[0] != current:
                response.status = HTTPStatus.PRECONDITION_FAILED
                response.json({"error": {"code": 412, "message": "Precondition Failed"}})
                return None
            not_match = request.query.get("ifGenerationNotMatch")
            if is_download and not_match and not_match[0] == current:
                response.status = HTTPStatus.NOT_MODIFIED
                response["x-goog-generation"] = current
                return None
        out = fn(request, response, storage, *args, **kwargs)
        if is_download and bucket and name and response.status in (HTTPStatus.OK, HTTPStatus.PARTIAL_CONTENT):
            response["x-goog-generation"] = _generation(storage, bucket, name)
            response["x-goog-metageneration"] = "1"
        return out

    return handler


def _patched_handlers():
    wrapped = {objects.download: _checked(objects.download, download=True),
               objects.get: _checked(objects.get, download=False),
               objects.insert: _checked(objects.insert, download=False),
               objects.xml_upload: _checked(objects.xml_upload, download=False)}
    return tuple((pattern, {verb: wrapped.get(fn, fn) for verb, fn in methods.items()})
                 for pattern, methods in server.HANDLERS)


if __name__ == "__main__":
    port, data_dir = int(sys.argv[1]), sys.argv[2]
    server.HANDLERS = _patched_handlers()
    server.create_server("127.0.0.1", port, in_memory=False, default_bucket="runs", data_dir=data_dir).run()
