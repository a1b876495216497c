"""A WebSocket echo backend for test_websocket.py (python3-websockets 10.x).

Listens on 127.0.0.1 on an ephemeral port and prints the port on its first
line of stdout. Every message is echoed as it came (text or binary); the
text message "__headers__" is answered with the upgrade request's header
fields as a JSON list of [name, value] pairs, so a test can check what ktlb
forwarded.
"""

import asyncio
import json

import websockets


async def handler(ws, path=None):
    async for msg in ws:
        if msg == "__headers__":
            await ws.send(json.dumps([[k, v] for k, v in ws.request_headers.raw_items()]))
        else:
            await ws.send(msg)


async def main():
    async with websockets.serve(handler, "127.0.0.1", 0, max_size=None, ping_interval=None) as server:
        print(server.sockets[0].getsockname()[1], flush=True)
        await asyncio.Future()


if __name__ == "__main__":
    asyncio.run(main())
