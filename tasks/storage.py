"""Object storage as users meet it: reach an s3:// location once, before any work, and say
in one line what is wrong when it cannot be reached (no credentials, refused
credentials, an endpoint that does not answer, a bucket that does not exist).

Local paths are not checked here: their commands say what is missing themselves.
"""

from __future__ import annotations

import os

import fsspec

from renalflow.tasks.errors import InputError

S3_CREDENTIALS_BLOCK_ENV = "RENALFLOW_S3_CREDENTIALS_BLOCK"
"""Names a Prefect AwsCredentials block to take S3 credentials from (flows/runtime.py)."""


class StorageAccessError(InputError):
    """An object-store location that cannot be used as given (a user's setting)."""


def endpoint() -> str:
    """The S3 endpoint in use, as a user would recognise it."""
    return (
        os.environ.get("AWS_ENDPOINT_URL_S3")
        or os.environ.get("AWS_ENDPOINT_URL")
        or "AWS S3 (no AWS_ENDPOINT_URL set)"
    )


def check_location(uri: str, what: str, *, must_exist: bool) -> None:
    """Reach `uri` (an s3:// URI; anything else passes) and refuse it in one line when
    its bucket cannot be reached, or when `must_exist` and nothing is there.

    `what` names the location for the user ("archive", "results table", ...).
    """
    if not uri.startswith("s3://"):
        return
    # botocore comes with the s3 extra, which the caller required for an s3:// URI.
    from botocore.exceptions import (
        ConnectTimeoutError,
        EndpointConnectionError,
        NoCredentialsError,
        PartialCredentialsError,
        ReadTimeoutError,
    )

    fs, path = fsspec.core.url_to_fs(uri)
    bucket = path.split("/", 1)[0]
    try:
        # Asked directly: fsspec's exists() answers False for a refused request too.
        try:
            fs.call_s3("head_bucket", Bucket=bucket)
        except FileNotFoundError as err:
            raise StorageAccessError(
                f"the {what} {uri}: bucket {bucket!r} does not exist at {endpoint()}; "
                "create it, or check the URI and AWS_ENDPOINT_URL"
            ) from err
        if must_exist and path.strip("/") != bucket:
            fs.invalidate_cache(path)
            try:
                fs.info(path)  # a key, or a prefix with keys under it
            except FileNotFoundError as err:
                raise StorageAccessError(
                    f"the {what} {uri} does not exist (bucket {bucket!r} has nothing under "
                    f"{path.removeprefix(bucket).lstrip('/') or '/'}); check the prefix"
                ) from err
    except (NoCredentialsError, PartialCredentialsError) as err:
        raise StorageAccessError(
            f"no S3 credentials for the {what} {uri}: set AWS_ACCESS_KEY_ID and "
            "AWS_SECRET_ACCESS_KEY (or AWS_PROFILE), or name a Prefect credentials block in "
            f"{S3_CREDENTIALS_BLOCK_ENV}"
        ) from err
    except PermissionError as err:
        raise StorageAccessError(
            f"{endpoint()} refused access to the {what} {uri} ({err}): check that "
            "AWS_ACCESS_KEY_ID and AWS_SECRET_ACCESS_KEY are right and may read the bucket"
        ) from err
    except (EndpointConnectionError, ConnectTimeoutError, ReadTimeoutError) as err:
        raise StorageAccessError(
            f"cannot reach the S3 endpoint {endpoint()} for the {what} {uri}: check "
            "AWS_ENDPOINT_URL and that the server is up and reachable from here"
        ) from err
