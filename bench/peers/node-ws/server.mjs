// A minimal Node `ws` chat server speaking confab's seed-compatible protocol
// (/ws/chat/{room}): every text frame is a message, broadcast to the room as
// {"client_id","room_id","message","timestamp","seq","id","user"}, serialized
// once per message. No persistence, no acks, no auth: the "Node ws server"
// reference point of docs/benchmarks.md, measured with the same load tool:
//
//   npm ci --prefix bench/peers/node-ws
//   taskset -c 0 node bench/peers/node-ws/server.mjs 8090
//   taskset -c 1 target/release/confab-bench fanout --protocol seed --url ws://127.0.0.1:8090 ...
import { WebSocketServer } from "ws";
import { randomUUID } from "node:crypto";

const port = Number(process.argv[2] ?? 8090);
const rooms = new Map(); // name -> { seq, members: Set<WebSocket> }
const wss = new WebSocketServer({ port, host: "127.0.0.1", perMessageDeflate: false });

wss.on("connection", (ws, req) => {
  const url = new URL(req.url, "http://localhost");
  const match = url.pathname.match(/^\/ws\/chat\/([A-Za-z0-9_.:-]{1,64})$/);
  if (!match) {
    ws.close(1008, "unknown path");
    return;
  }
  const name = match[1];
  const user = url.searchParams.get("name") ?? `guest-${randomUUID().slice(0, 4)}`;
  const clientId = `guest:${randomUUID()}`;
  let room = rooms.get(name);
  if (!room) {
    room = { seq: 0, members: new Set() };
    rooms.set(name, room);
  }
  room.members.add(ws);
  ws.on("message", (data, isBinary) => {
    if (isBinary) return;
    room.seq += 1;
    const frame = JSON.stringify({
      client_id: clientId,
      room_id: name,
      message: data.toString(),
      timestamp: new Date().toISOString(),
      seq: room.seq,
      id: randomUUID(),
      user,
    });
    for (const member of room.members) member.send(frame);
  });
  ws.on("close", () => room.members.delete(ws));
});
console.log(`node ws seed server listening on 127.0.0.1:${port}`);
