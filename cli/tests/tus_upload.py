"""Uploads a file to Cadenza's origin with tuspy, a tus client not written here.

usage: tus_upload.py ORIGIN LABEL_KEY FILE CHUNK STOP_AT [UPLOAD_URL]

Creates an upload (or resumes UPLOAD_URL, asking the server for its offset), sends
CHUNK-byte PATCHes with a sha256 Upload-Checksum until STOP_AT bytes (-1: all), and prints
one JSON line: the upload URL and the offset reached. The CA comes from REQUESTS_CA_BUNDLE.
"""
import hashlib
import json
import sys

from tusclient import client
from tusclient.uploader import Uploader


class Sha256Uploader(Uploader):
    # tuspy checksums chunks with sha1 by default; the origin offers sha256 as well.
    CHECKSUM_ALGORITHM_PAIR = ("sha256", hashlib.sha256)


def main():
    origin, key, path, chunk, stop_at = sys.argv[1:6]
    url = sys.argv[6] if len(sys.argv) > 6 else None
    c = client.TusClient(origin + "/v1/uploads", headers={"Authorization": "Bearer " + key})
    up = Sha256Uploader(
        file_path=path,
        client=c,
        url=url,
        chunk_size=int(chunk),
        metadata={"filename": path.rsplit("/", 1)[-1], "filetype": "audio/flac"},
        upload_checksum=True,
    )
    start = up.offset  # what the server reported when resuming; 0 for a new upload
    stop = int(stop_at)
    if stop < 0:
        up.upload()
    else:
        up.upload(stop_at=stop)
    print(json.dumps({"url": up.url, "start": start, "offset": up.offset}))


if __name__ == "__main__":
    main()
