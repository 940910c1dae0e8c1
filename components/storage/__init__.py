"""Object storage (S3-compatible) and local paths behind one small API; the only user of boto3.

Conventions (see ``docs/architecture.md``):

- ``s3://bucket/prefix/`` names object storage; anything else is a local path.
- The endpoint comes from ``AWS_ENDPOINT_URL`` (or ``MLFLOW_S3_ENDPOINT_URL``), credentials from
  the standard AWS variables, with path-style addressing (MinIO, SeaweedFS). Only
  :func:`client_from_env` reads the environment; every other function takes an explicit
  ``client`` and falls back to :func:`client_from_env` only when none is given.
- A prefix is a folder: ``s3://b/data`` and ``s3://b/data/`` both mean the keys under ``data/``
  (never ``data2/...``); ``s3://b`` is the whole bucket.
- Failures raise :class:`components.contracts.errors.StorageError`, whose message names the endpoint,
  bucket or key and the cause in plain words, never a credential.
- Transfers are verified: sizes always, MD5 ETags (and multipart ETags where the part size is a
  usual one) where checkable.

Modules: :mod:`~components.storage.uris` (URI strings, no boto3), :mod:`~components.storage.client`,
:mod:`~components.storage.errors`, :mod:`~components.storage.listing`,
:mod:`~components.storage.fingerprint`, :mod:`~components.storage.etags`,
:mod:`~components.storage.transfer`, :mod:`~components.storage.files` (local walks and hashes) and
:mod:`~components.storage.publish` (a finished run to a bucket).
"""

from components.storage.client import client_from_env, endpoint_from_env, s3_client
from components.storage.errors import storage_error
from components.storage.etags import etag_matches
from components.storage.fingerprint import fingerprint
from components.storage.listing import ObjectInfo, check_bucket, list_objects
from components.storage.transfer import download_prefix, materialize, upload_dir, upload_file
from components.storage.uris import is_s3_uri, join_uri, parse_s3_uri

__all__ = [
    "ObjectInfo", "check_bucket", "client_from_env", "download_prefix", "endpoint_from_env", "etag_matches",
    "fingerprint", "is_s3_uri", "join_uri", "list_objects", "materialize", "parse_s3_uri", "s3_client",
    "storage_error", "upload_dir", "upload_file",
]
