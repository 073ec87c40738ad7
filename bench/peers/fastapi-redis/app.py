"""A FastAPI + Redis chat server speaking confab's seed-compatible protocol.

The "FastAPI + Redis" reference point of docs/benchmarks.md, written the way
the classic tutorial scales out: every message gets its room's seq from
Redis (INCR), is published on the room's channel, and every connection's
subscriber task forwards what it hears. No persistence beyond Redis, no
acks, no auth. Measured with the same load tool:

    pip install -r bench/peers/fastapi-redis/requirements.txt
    taskset -c 0 uvicorn --app-dir bench/peers/fastapi-redis app:app --port 8091 --log-level warning
    taskset -c 1 target/release/confab-bench fanout --protocol seed --url ws://127.0.0.1:8091 ...
"""

import asyncio
import json
import os
import uuid
from datetime import datetime, timezone

import redis.asyncio as redis
from fastapi import FastAPI, WebSocket, WebSocketDisconnect

app = FastAPI()
# One pub/sub connection per WebSocket, as the tutorial design has it.
pool = redis.ConnectionPool.from_url(
    os.environ.get("REDIS_URL", "redis://127.0.0.1:6379"), max_connections=100_000
)
# INCR and PUBLISH in one script: two separate commands from different
# connections could publish seq 6 before seq 5.
SEQUENCE_AND_PUBLISH = """
local seq = redis.call('INCR', KEYS[1])
redis.call('PUBLISH', KEYS[2], ARGV[1] .. seq .. ARGV[2])
return seq
"""
NAMESPACE = os.environ.get("PEER_NAMESPACE", "peer-fastapi")


@app.websocket("/ws/chat/{room}")
async def chat(websocket: WebSocket, room: str, name: str | None = None):
    await websocket.accept()
    client = redis.Redis(connection_pool=pool)
    pubsub = client.pubsub()
    channel = f"{NAMESPACE}:room:{room}"
    await pubsub.subscribe(channel)
    user = name or f"guest-{uuid.uuid4().hex[:4]}"
    client_id = f"guest:{uuid.uuid4()}"

    async def forward():
        async for item in pubsub.listen():
            if item["type"] == "message":
                await websocket.send_text(item["data"].decode())

    forwarder = asyncio.create_task(forward())
    try:
        while True:
            text = await websocket.receive_text()
            head = json.dumps(
                {"client_id": client_id, "room_id": room, "message": text,
                 "timestamp": datetime.now(timezone.utc).isoformat()},
                separators=(",", ":"),
            )[:-1]
            tail = json.dumps({"id": str(uuid.uuid4()), "user": user}, separators=(",", ":"))[1:]
            await client.eval(
                SEQUENCE_AND_PUBLISH, 2, f"{NAMESPACE}:seq:{room}", channel,
                head + ',"seq":', "," + tail,
            )
    except WebSocketDisconnect:
        pass
    finally:
        forwarder.cancel()
        await pubsub.unsubscribe(channel)
        await pubsub.aclose()
