/** Where the agent's API is, and what the SDK says when it cannot reach it. */

import assert from "node:assert/strict";
import { writeFileSync } from "node:fs";
import { join } from "node:path";
import { test } from "node:test";

import { DEFAULT_URL, DStackP2PSDK, parseApi, resolveApi } from "../dist/index.js";
import { RequestTimeout, unreachableMessage } from "../dist/endpoint.js";
import { sockDir } from "./fake-agent.js";

test("socket paths, plain or as unix: URLs", () => {
  assert.equal(parseApi("/run/p2p-agent/api.sock").socket, "/run/p2p-agent/api.sock");
  assert.equal(parseApi("relative.sock").socket, "relative.sock");
  assert.equal(parseApi("unix:///run/x.sock").socket, "/run/x.sock");
  assert.equal(parseApi("unix:/run/x.sock").socket, "/run/x.sock");
  const e = parseApi("/run/x.sock");
  assert.equal(e.url, null);
  assert.equal(e.address, "/run/x.sock");
  assert.equal(e.baseUrl, "http://localhost");
  assert.equal(e.describe(), "unix socket /run/x.sock (from argument)");
});

for (const [raw, url] of [
  ["http://127.0.0.1:8000", "http://127.0.0.1:8000"],
  ["http://127.0.0.1:8000/", "http://127.0.0.1:8000"],
  ["http://localhost:9", "http://localhost:9"],
  ["http://127.1.2.3:8000", "http://127.1.2.3:8000"],
  ["http://[::1]:8000", "http://[::1]:8000"],
  ["http://127.0.0.1", "http://127.0.0.1"],
] as const) {
  test(`the loopback URL ${raw} is taken`, () => {
    const e = parseApi(raw);
    assert.equal(e.url, url);
    assert.equal(e.socket, null);
    assert.equal(e.baseUrl, url);
  });
}

for (const raw of [
  "http://10.0.1.2:8000",
  "http://192.0.2.1:8000",
  "http://example.com:8000",
  "http://0.0.0.0:8000",
  "http://[::2]:8000",
]) {
  test(`the non-loopback URL ${raw} is refused`, () => {
    assert.throws(() => parseApi(raw), {
      name: "TypeError",
      message: /is not a loopback address: the agent's API is local only/,
    });
  });
}

for (const [raw, message] of [
  ["https://127.0.0.1:8000", /plain HTTP/],
  ["http://127.0.0.1:8000/v1", /without a path/],
  ["http://127.0.0.1:8000/?x=1", /without a path/],
  ["", /empty/],
  ["unix:", /names no socket path/],
  ["http://127.0.0.1:99999", /99999/],
] as const) {
  test(`the address ${JSON.stringify(raw)} is refused, saying why`, () => {
    assert.throws(() => parseApi(raw), { name: "TypeError", message });
  });
}

test("the argument, then DSTACK_MESH_API, then the default socket if it exists, then the default URL", () => {
  const dir = sockDir();
  try {
    const sock = join(dir.path, "api.sock");
    const missing = join(dir.path, "none.sock");
    let e = resolveApi("/arg.sock", { DSTACK_MESH_API: "http://127.0.0.1:1" }, missing);
    assert.deepEqual([e.socket, e.source], ["/arg.sock", "argument"]);
    e = resolveApi(null, { DSTACK_MESH_API: "http://127.0.0.1:1" }, missing);
    assert.deepEqual([e.url, e.source], ["http://127.0.0.1:1", "DSTACK_MESH_API"]);
    e = resolveApi(undefined, { DSTACK_MESH_API: " /env.sock " }, missing);
    assert.deepEqual([e.socket, e.source], ["/env.sock", "DSTACK_MESH_API"]);
    // Unset or empty: the socket if it exists, else the sidecar's loopback URL.
    e = resolveApi(null, { DSTACK_MESH_API: "" }, missing);
    assert.deepEqual([e.url, e.source], [DEFAULT_URL, "default URL"]);
    writeFileSync(sock, "");
    e = resolveApi(null, {}, sock);
    assert.deepEqual([e.socket, e.source], [sock, "default socket"]);
  } finally {
    dir.remove();
  }
});

test("the environment's address is checked too", () => {
  assert.throws(() => resolveApi(null, { DSTACK_MESH_API: "http://10.0.0.1:8000" }), {
    message: /from DSTACK_MESH_API\) is not a loopback/,
  });
});

test("the SDK reads the environment", () => {
  const saved = process.env["DSTACK_MESH_API"];
  try {
    process.env["DSTACK_MESH_API"] = "http://127.0.0.1:8123";
    assert.equal(new DStackP2PSDK().api, "http://127.0.0.1:8123");
    process.env["DSTACK_MESH_API"] = "http://198.51.100.1:8000";
    assert.throws(() => new DStackP2PSDK(), /local only/);
  } finally {
    if (saved === undefined) delete process.env["DSTACK_MESH_API"];
    else process.env["DSTACK_MESH_API"] = saved;
  }
});

test("the SDK's arguments are checked", () => {
  assert.throws(() => new DStackP2PSDK("0x123", null, { api: "/x.sock" }), {
    name: "TypeError",
    message: /not a contract address/,
  });
  assert.throws(() => new DStackP2PSDK({ contract: "", api: "/x.sock" }), /not a contract address/);
  assert.throws(
    () => new DStackP2PSDK({ mode: "kernel" as "tls", api: "/x.sock" }),
    /mode "kernel" is not one of wireguard, tls/,
  );
  for (const timeout of [0, -1, Number.NaN]) {
    assert.throws(
      () => new DStackP2PSDK({ api: "/x.sock", timeout }),
      /timeout must be a positive number of seconds/,
    );
  }
  const sdk = new DStackP2PSDK(" 0x" + "aB".repeat(20) + " ", "tls", { api: "/dev/null" });
  assert.equal(sdk.contract, "0x" + "aB".repeat(20));
  assert.equal(sdk.mode, "tls");
  const same = new DStackP2PSDK({ contract: "0x" + "aB".repeat(20), mode: "tls", api: "/dev/null" });
  assert.deepEqual([same.contract, same.mode, same.api], [sdk.contract, sdk.mode, sdk.api]);
});

test("each way of being unreachable has its own message", () => {
  const socket = parseApi("/run/p2p-agent/api.sock");
  const url = parseApi("http://127.0.0.1:8000", "DSTACK_MESH_API");
  const sys = (code: string) => Object.assign(new Error(`connect ${code} /x`), { code });
  // fetch wraps the socket's error in its own, and an attempt per address in an AggregateError.
  const wrapped = (code: string) =>
    new TypeError("fetch failed", { cause: new AggregateError([sys(code)], "") });
  const cases: [ReturnType<typeof parseApi>, unknown, RegExp][] = [
    [
      socket,
      sys("ENOENT"),
      /no socket at unix socket \/run\/p2p-agent\/api.sock \(from argument\)\. Is the agent running, and is its socket's directory mounted/,
    ],
    [socket, sys("EACCES"), /permission denied\. The socket is mode 0660 by default.*--api-socket-group/],
    [socket, sys("EPERM"), /permission denied/],
    [socket, sys("ECONNREFUSED"), /exists but nothing accepts on it/],
    [socket, sys("ENOTSOCK"), /is not a socket\. Set DSTACK_MESH_API/],
    [
      url,
      wrapped("ECONNREFUSED"),
      /at URL http:\/\/127\.0\.0\.1:8000 \(from DSTACK_MESH_API\): connection refused.*network_mode: service:/,
    ],
    [url, new RequestTimeout(5), /did not answer within 5 s: is it stuck\?/],
    [socket, Object.assign(new Error("x"), { code: "ETIMEDOUT" }), /did not answer within 5 s/],
    [
      url,
      wrapped("EHOSTUNREACH"),
      /cannot reach the dstack-mesh agent at URL .* \(connect EHOSTUNREACH \/x\)\. Is the agent running\?/,
    ],
    [socket, new Error("something odd"), /\(something odd\)\. Is the agent running\?/],
  ];
  for (const [endpoint, cause, message] of cases) {
    assert.match(unreachableMessage(endpoint, cause, 5), message);
  }
});
