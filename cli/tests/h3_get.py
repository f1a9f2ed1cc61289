#!/usr/bin/env python3
"""Fetch one byte range over HTTP/3 only, with niquests (HTTP/3 through qh3): an HTTP/3 client
not written by this project. Writes the body to OUT and prints status, protocol and
Content-Range as JSON.

Usage: h3_get.py URL TOKEN CA_PEM RANGE OUT
"""
import json
import sys
from urllib.parse import urlparse

import niquests

url, token, ca, byte_range, out = sys.argv[1:6]
parsed = urlparse(url)
with niquests.Session(disable_http1=True, disable_http2=True) as session:
    session.quic_cache_layer.add_domain(parsed.hostname, parsed.port)
    resp = session.get(
        url,
        headers={"Authorization": f"Bearer {token}", "Range": byte_range},
        verify=ca,
        timeout=10,
    )
    with open(out, "wb") as f:
        f.write(resp.content)
    print(json.dumps({
        "status": resp.status_code,
        "http_version": resp.http_version,
        "content_range": resp.headers.get("content-range"),
        "alt_svc": resp.headers.get("alt-svc"),
    }))
