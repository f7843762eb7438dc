// End-to-end encryption as Element does it, with matrix-js-sdk and its Rust crypto (vodozemac):
//   alice and bob exchange encrypted messages in a new DM and each decrypts the other's;
//   bob bootstraps cross-signing and secret storage with a key backup, which uploads his
//   room keys; a new device of bob unlocks secret storage with the recovery key, restores the
//   backup, decrypts the room's history and is cross-signed.
// Usage: node e2ee_flow.mjs ALICE_BASE_URL BOB_BASE_URL
// Prints one JSON line of results on stdout last; exits non-zero with a message on failure.
// The test that runs it (tests/homeserver/test_e2ee_jssdk.py) asserts on that JSON.

// matrix-js-sdk 43 expects Node 22's Promise.withResolvers; supply it on Node 20.
if (!Promise.withResolvers) {
  Promise.withResolvers = function () {
    let resolve, reject;
    const promise = new Promise((res, rej) => { resolve = res; reject = rej; });
    return { promise, resolve, reject };
  };
}

const sdk = await import("matrix-js-sdk");
const { logger } = await import("matrix-js-sdk/lib/logger.js");
logger.setLevel("error");

const [aliceBase, bobBase] = [process.argv[2], process.argv[3] ?? process.argv[2]];
const suffix = Date.now().toString(36);
const TIMEOUT_MS = Number(process.env.FLOW_TIMEOUT_MS ?? 30000);

function fail(message) {
  process.stderr.write(`FLOW FAILED: ${message}\n`);
  process.exit(1);
}
process.on("unhandledRejection", (e) => fail(e?.stack ?? String(e)));

async function api(base, method, path, body, token) {
  const headers = { "Content-Type": "application/json" };
  if (token) headers.Authorization = `Bearer ${token}`;
  const r = await fetch(base + path, {
    method, headers, body: body === undefined ? undefined : JSON.stringify(body),
  });
  return [r.status, await r.json()];
}

async function register(base, name) {
  const [status, body] = await api(base, "POST", "/_matrix/client/v3/register", {
    username: name, password: `${name}-pw`, auth: { type: "m.login.dummy" },
  });
  if (status !== 200) fail(`register ${name}: ${status} ${JSON.stringify(body)}`);
  return { ...body, base, password: `${name}-pw` };
}

async function login(creds) {
  const [status, body] = await api(creds.base, "POST", "/_matrix/client/v3/login", {
    type: "m.login.password", identifier: { type: "m.id.user", user: creds.user_id },
    password: creds.password,
  });
  if (status !== 200) fail(`login ${creds.user_id}: ${status} ${JSON.stringify(body)}`);
  return { ...body, base: creds.base, password: creds.password };
}

// The recovery key bob creates; every client of his answers secret-storage prompts with it.
let recoveryKey = null;

async function startClient(creds) {
  const client = sdk.createClient({
    baseUrl: creds.base, userId: creds.user_id, accessToken: creds.access_token,
    deviceId: creds.device_id,
    cryptoCallbacks: {
      getSecretStorageKey: async ({ keys }) =>
        recoveryKey ? [Object.keys(keys)[0], recoveryKey.privateKey] : null,
    },
  });
  await client.initRustCrypto({ useIndexedDB: false });
  const prepared = new Promise((resolve) => {
    client.on(sdk.ClientEvent.Sync, (state) => { if (state === "PREPARED") resolve(); });
  });
  await client.startClient({ initialSyncLimit: 50 });
  await prepared;
  return client;
}

async function waitFor(what, predicate) {
  const start = Date.now();
  let lastError = null;
  while (Date.now() - start < TIMEOUT_MS) {
    try {
      const value = await predicate();
      if (value) return value;
    } catch (e) {
      lastError = e;
    }
    await new Promise((r) => setTimeout(r, 200));
  }
  fail(`timed out waiting for ${what}${lastError ? `: ${lastError}` : ""}`);
}

async function decryptedTexts(client, roomId) {
  const room = client.getRoom(roomId);
  if (!room) return [];
  const texts = [];
  for (const event of room.getLiveTimeline().getEvents()) {
    if (event.isEncrypted()) await client.decryptEventIfNeeded(event);
    if (event.getType() === "m.room.message") texts.push(event.getContent().body);
  }
  return texts;
}

function uiaPassword(creds) {
  return async (makeRequest) => {
    try {
      await makeRequest(null);
    } catch (e) {
      if (!e.data?.flows) throw e;
      await makeRequest({
        type: "m.login.password", session: e.data.session,
        identifier: { type: "m.id.user", user: creds.user_id }, password: creds.password,
      });
    }
  };
}

const result = {};
const aliceCreds = await register(aliceBase, `alice${suffix}`);
const bobCreds = await register(bobBase, `bob${suffix}`);
const alice = await startClient(aliceCreds);
const bob = await startClient(bobCreds);

// 1. A new DM; each decrypts the other's message.
const { room_id: roomId } = await alice.createRoom({
  preset: "trusted_private_chat", is_direct: true, invite: [bobCreds.user_id],
  initial_state: [{
    type: "m.room.encryption", state_key: "", content: { algorithm: "m.megolm.v1.aes-sha2" },
  }],
});
result.roomId = roomId;
await waitFor("bob's invite", () => bob.getRoom(roomId));
await bob.joinRoom(roomId);
await waitFor("bob's join at alice", () => alice.getRoom(roomId)?.getJoinedMemberCount() === 2);
await alice.sendTextMessage(roomId, "secret from alice");
await waitFor("bob decrypting alice", async () =>
  (await decryptedTexts(bob, roomId)).includes("secret from alice"));
await bob.sendTextMessage(roomId, "secret from bob");
await waitFor("alice decrypting bob", async () =>
  (await decryptedTexts(alice, roomId)).includes("secret from bob"));
result.exchanged = true;

// 2. Cross-signing, secret storage and a key backup on bob's first device.
const bobCrypto = bob.getCrypto();
await bobCrypto.bootstrapCrossSigning({
  authUploadDeviceSigningKeys: uiaPassword(bobCreds), setupNewCrossSigning: true,
});
recoveryKey = await bobCrypto.createRecoveryKeyFromPassphrase();
await bobCrypto.bootstrapSecretStorage({
  createSecretStorageKey: async () => recoveryKey,
  setupNewSecretStorage: true, setupNewKeyBackup: true,
});
result.crossSigningReady = await bobCrypto.isCrossSigningReady();
result.secretStorageReady = await bobCrypto.isSecretStorageReady();
const backup = await bobCrypto.getKeyBackupInfo();
result.backupVersion = backup?.version ?? null;
await waitFor("both room keys in the backup", async () => {
  const [status, body] = await api(bobBase, "GET",
    `/_matrix/client/v3/room_keys/keys?version=${backup.version}`, undefined,
    bobCreds.access_token);
  return status === 200 && Object.keys(body.rooms?.[roomId]?.sessions ?? {}).length >= 2;
});
result.backedUp = true;
await alice.sendTextMessage(roomId, "secret after the backup");
await waitFor("bob decrypting the third message", async () =>
  (await decryptedTexts(bob, roomId)).includes("secret after the backup"));

// 3. A new device of bob: recovery key -> secret storage -> backup key -> history.
const bob2Creds = await login(bobCreds);
const bob2 = await startClient(bob2Creds);
const bob2Crypto = bob2.getCrypto();
// The new device must know its user's public cross-signing keys before it imports the
// private ones from secret storage (it checks that they match).
await waitFor("bob's cross-signing keys on the new device", () =>
  bob2Crypto.userHasCrossSigningKeys(bob2Creds.user_id, true));
await bob2Crypto.bootstrapCrossSigning({ authUploadDeviceSigningKeys: uiaPassword(bob2Creds) });
await bob2Crypto.loadSessionBackupPrivateKeyFromSecretStorage();
const restored = await bob2Crypto.restoreKeyBackup();
result.restoredKeys = restored.imported;
result.bob2History = await waitFor("bob's new device decrypting history", async () => {
  const texts = await decryptedTexts(bob2, roomId);
  const all = ["secret from alice", "secret from bob", "secret after the backup"];
  return all.every((t) => texts.includes(t)) ? texts : null;
});
// Bootstrapping signed the new device with bob's self-signing key; once that signature is
// back from the server, the device counts as cross-signing verified.
result.bob2CrossSigned = await waitFor("the new device cross-signed", async () =>
  (await bob2Crypto.getDeviceVerificationStatus(bob2Creds.user_id, bob2Creds.device_id))
    ?.crossSigningVerified);

for (const client of [alice, bob, bob2]) client.stopClient();
process.stdout.write(`\n${JSON.stringify(result)}\n`);
process.exit(0);
