"""The test control plane's pod network: an HTTP CONNECT proxy on a unix socket that the API server's
egress selector sends every connection to a pod or node through (its service and pod proxy, kubelet
calls). Whatever address the API server asks for, the proxy connects to one loopback host, keeping the
port: a `ray start --head` whose dashboard listens there on 8265 stands in for every head pod, and no
connection ever leaves this machine. With a real node (scripts/node.sh), addresses in its pod subnet (a
bridge on this machine) are dialled as they are.

usage: python3 pod_network.py SOCKET_PATH LOOPBACK_HOST [POD_CIDR]
"""

from __future__ import annotations

import asyncio
import ipaddress
import os
import sys


async def pipe(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    try:
        while data := await reader.read(65536):
            writer.write(data)
            await writer.drain()
    except (ConnectionError, OSError):
        pass
    finally:
        writer.close()


async def serve(host: str, pods: ipaddress.IPv4Network | None, reader: asyncio.StreamReader,
                writer: asyncio.StreamWriter) -> None:
    head = b""
    try:
        head = await reader.readuntil(b"\r\n\r\n")
        method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
        address, port = target.rsplit(":", 1)[0], int(target.rsplit(":", 1)[1])
        if method != "CONNECT":
            raise ValueError(method)
        if pods is not None and _is_in(address, pods):
            host = address
        upstream_reader, upstream_writer = await asyncio.open_connection(host, port)
    except (ValueError, IndexError, OSError, asyncio.IncompleteReadError) as e:
        print(f"pod-network: refused {head[:80]!r}: {e!r}", flush=True)
        writer.write(b"HTTP/1.1 502 Bad Gateway\r\n\r\n")
        writer.close()
        return
    print(f"pod-network: {target} -> {host}:{port}", flush=True)
    writer.write(b"HTTP/1.1 200 Connection established\r\n\r\n")
    await asyncio.gather(pipe(reader, upstream_writer), pipe(upstream_reader, writer))


def _is_in(address: str, network: ipaddress.IPv4Network) -> bool:
    try:
        return ipaddress.ip_address(address) in network
    except ValueError:  # a name (the kubelet's node name), not an address
        return False


async def main(path: str, host: str, pod_cidr: str | None) -> None:
    if not ipaddress.ip_address(host).is_loopback:
        raise SystemExit(f"pod-network: {host} is not a loopback address")
    pods = ipaddress.ip_network(pod_cidr) if pod_cidr else None
    if os.path.exists(path):
        os.unlink(path)
    server = await asyncio.start_unix_server(lambda r, w: serve(host, pods, r, w), path)
    async with server:
        await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3] if len(sys.argv) > 3 else None))
