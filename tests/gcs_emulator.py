"""A local Cloud Storage server for tests: ``python tests/gcs_emulator.py PORT DATA_DIR``.

``gcp-storage-emulator`` plus the two parts of the real service that TensorStore (Orbax's array store)
relies on and the emulator lacks: object generations in download headers (``x-goog-generation``) and the
generation preconditions of reads and writes (``ifGenerationMatch`` -> 412, ``ifGenerationNotMatch`` ->
304), which TensorStore's OCDBT format uses to update its manifest safely.
"""

import sys
from http import HTTPStatus

from gcp_storage_emulator import server
from gcp_storage_emulator.exceptions import NotFound
from gcp_storage_emulator.handlers import objects


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
