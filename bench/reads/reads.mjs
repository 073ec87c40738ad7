// Read markers under load (docs/benchmarks.md, issue 18): one room, N members,
// one sender at R messages/s for D seconds; with --reads every member sends
// `read` for each message it gets (the worst a client can do). Prints the
// server's CPU (from /proc) and what it delivered, so a run with reads can be
// compared with one without.
//
//   node --experimental-websocket bench/reads/reads.mjs URL PID [--reads] [N] [R] [D]
import { readFileSync } from "node:fs";
import { createHmac } from "node:crypto";

const [url, pid, ...rest] = process.argv.slice(2);
const reads = rest.includes("--reads");
const [n = 100, rate = 100, secs = 10] = rest.filter((a) => a !== "--reads").map(Number);
const secret = "confab-bench-secret-not-for-production";
const b64 = (s) => Buffer.from(s).toString("base64url");
const token = (sub) => {
  const head = b64(JSON.stringify({ alg: "HS256", typ: "JWT" }));
  const body = b64(JSON.stringify({ sub, name: sub, exp: Math.floor(Date.now() / 1000) + 3600 }));
  const sig = createHmac("sha256", secret).update(`${head}.${body}`).digest("base64url");
  return `${head}.${body}.${sig}`;
};
const cpuTicks = () => {
  const f = readFileSync(`/proc/${pid}/stat`, "utf8").split(") ")[1].split(" ");
  return Number(f[11]) + Number(f[12]);
};
const room = `reads-${Date.now()}`;
let delivered = 0;
let readsSent = 0;
const open = (i) =>
  new Promise((ok, fail) => {
    const ws = new WebSocket(`${url.replace(/^http/, "ws")}/ws?token=${token(`r${i}-${room}`)}`);
    ws.onopen = () => ws.send(JSON.stringify({ type: "join", room, history: 0 }));
    ws.onerror = fail;
    ws.onmessage = (e) => {
      const f = JSON.parse(e.data);
      if (f.type === "joined") ok(ws);
      if (f.type === "message") {
        delivered++;
        if (reads) {
          ws.send(JSON.stringify({ type: "read", room, seq: f.seq }));
          readsSent++;
        }
      }
    };
  });
const members = [];
for (let i = 0; i < n; i++) members.push(await open(i));
const sender = members[0];
await new Promise((r) => setTimeout(r, 500));
const t0 = Date.now();
const c0 = cpuTicks();
let sent = 0;
const timer = setInterval(() => {
  sender.send(JSON.stringify({ type: "send", room, content: `m ${sent}`, ref: `s${sent}` }));
  sent++;
}, 1000 / rate);
await new Promise((r) => setTimeout(r, secs * 1000));
clearInterval(timer);
await new Promise((r) => setTimeout(r, 1000));
const c1 = cpuTicks();
const elapsed = (Date.now() - t0) / 1000;
console.log(
  JSON.stringify({
    reads,
    members: n,
    sent,
    delivered,
    reads_sent: readsSent,
    server_cpu_percent: Math.round(((c1 - c0) / 100 / elapsed) * 1000) / 10,
  }),
);
members.forEach((ws) => ws.close());
process.exit(0);
