"""Object storage (S3-compatible) and local paths behind one small API; the only user of boto3."""

from components.storage.s3 import (
    ObjectInfo,
    check_bucket,
    client_from_env,
    download_prefix,
    endpoint_from_env,
    etag_matches,
    fingerprint,
    is_s3_uri,
    join_uri,
    list_objects,
    materialize,
    parse_s3_uri,
    s3_client,
    storage_error,
    upload_dir,
    upload_file,
)

__all__ = [
    "ObjectInfo", "check_bucket", "client_from_env", "download_prefix", "endpoint_from_env", "etag_matches",
    "fingerprint", "is_s3_uri", "join_uri", "list_objects", "materialize", "parse_s3_uri", "s3_client",
    "storage_error", "upload_dir", "upload_file",
]
