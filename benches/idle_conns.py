"""Opens N keep-alive connections, asks one small request on each, and holds them idle.

    idle_conns.py HOST PORT N PATH [tls CA_PEM]

Prints "open K" once every connection has had its answer (a 200), then keeps them open
until stdin closes. Connections the server refused, closed or answered with an error are
not counted.
"""
import asyncio
import ssl
import sys


async def one(host, port, path, ctx, gate):
    async with gate:
        try:
            reader, writer = await asyncio.open_connection(
                host, port, ssl=ctx, server_hostname="localhost" if ctx else None
            )
            writer.write(f"GET {path} HTTP/1.1\r\nHost: localhost\r\n\r\n".encode())
            await writer.drain()
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), 30)
            # Only a served request counts: an error (plain HTTP sent to a TLS port gets a
            # 400 and a close) is a connection the server did not keep.
            if not head.startswith((b"HTTP/1.1 200 ", b"HTTP/1.0 200 ")):
                writer.close()
                return None
            length = 0
            for line in head.split(b"\r\n"):
                if line.lower().startswith(b"content-length:"):
                    length = int(line.split(b":")[1])
            await reader.readexactly(length)
            return writer
        except (OSError, asyncio.IncompleteReadError, asyncio.TimeoutError):
            return None


async def main():
    host, port, n, path = sys.argv[1], int(sys.argv[2]), int(sys.argv[3]), sys.argv[4]
    ctx = None
    if len(sys.argv) > 5 and sys.argv[5] == "tls":
        ctx = ssl.create_default_context(cafile=sys.argv[6])
    gate = asyncio.Semaphore(200)
    writers = await asyncio.gather(*(one(host, port, path, ctx, gate) for _ in range(n)))
    open_ = [w for w in writers if w is not None]
    print(f"open {len(open_)}", flush=True)
    await asyncio.get_running_loop().run_in_executor(None, sys.stdin.read)
    for w in open_:
        w.close()


asyncio.run(main())
