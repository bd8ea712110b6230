"""moto's S3 server (`moto_server`), with the access key id masked in its request log.

Presigned URLs (MLflow's artifact downloads) carry `X-Amz-Credential=<access key id>/...` in their
query string, which werkzeug's request log would write out as is.

    python stack/s3_server.py -H 127.0.0.1 -p PORT
"""

from __future__ import annotations

import logging
import re
import sys

_SECRET_QUERY = re.compile(
    r"(X-Amz-(?:Credential|Signature|Security-Token)|AWSAccessKeyId|Signature)=[^&\s\"]+", re.IGNORECASE)


class _Redact(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        masked = _SECRET_QUERY.sub(r"\1=***", message)
        if masked != message:
            record.msg, record.args = masked, ()
        return True


def main() -> int:
    logging.getLogger("werkzeug").addFilter(_Redact())
    from moto.server import main as moto_main

    moto_main(sys.argv[1:])
    return 0


if __name__ == "__main__":
    sys.exit(main())
