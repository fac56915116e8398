// Cognito's SRP sign-in (USER_SRP_AUTH, then the PASSWORD_VERIFIER challenge): the password never leaves the
// page, only a proof that the page knows it. Amazon Cognito's variant of SRP-6a (RFC 5054's 3072-bit group,
// SHA-256, HKDF "Caldera Derived Key"), written out with BigInt and WebCrypto: no library, no CDN.
// tests/browser/test_history_page.py checks it against pycognito's implementation.

const N = BigInt(
  "0x" +
  "FFFFFFFFFFFFFFFFC90FDAA22168C234C4C6628B80DC1CD129024E088A67CC74020BBEA63B139B22514A08798E3404DD" +
  "EF9519B3CD3A431B302B0A6DF25F14374FE1356D6D51C245E485B576625E7EC6F44C42E9A637ED6B0BFF5CB6F406B7ED" +
  "EE386BFB5A899FA5AE9F24117C4B1FE649286651ECE45B3DC2007CB8A163BF0598DA48361C55D39A69163FA8FD24CF5F" +
  "83655D23DCA3AD961C62F356208552BB9ED529077096966D670C354E4ABC9804F1746C08CA18217C32905E462E36CE3B" +
  "E39E772C180E86039B2783A2EC07A28FB5C55DF06F4C52C9DE2BCBF6955817183995497CEA956AE515D2261898FA0510" +
  "15728E5A8AAAC42DAD33170D04507A33A85521ABDF1CBA64ECFB850458DBEF0A8AEA71575D060C7DB3970F85A6E1E4C7" +
  "ABF5AE8CDB0933D71E8C94E04A25619DCEE3D2261AD2EE6BF12FFA06D98A0864D87602733EC86A64521F2B18177B200C" +
  "BBE117577A615D6C770988C0BAD946E208E24FA074E5AB3143DB5BFCE0FD108E4B82D120A93AD2CAFFFFFFFFFFFFFFFF"
);
const G = 2n;
const INFO = new TextEncoder().encode("Caldera Derived Key");
const DAYS = ["Sun", "Mon", "Tue", "Wed", "Thu", "Fri", "Sat"];
const MONTHS = ["Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"];

// Hex as SRP hashes it: an even number of digits, and a leading 00 where the first bit is set (two's complement).
function padHex(value) {
  let hex = typeof value === "bigint" ? value.toString(16) : value;
  if (hex.length % 2 === 1) hex = "0" + hex;
  else if ("89abcdefABCDEF".includes(hex[0])) hex = "00" + hex;
  return hex;
}

function hexToBytes(hex) {
  const bytes = new Uint8Array(hex.length / 2);
  for (let i = 0; i < bytes.length; i += 1) bytes[i] = parseInt(hex.substr(i * 2, 2), 16);
  return bytes;
}

function bytesToHex(bytes) {
  return Array.from(bytes, (byte) => byte.toString(16).padStart(2, "0")).join("");
}

async function sha256Hex(bytes) {
  return bytesToHex(new Uint8Array(await crypto.subtle.digest("SHA-256", bytes)));
}

async function hmac(key, message) {
  const imported = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" }, false, ["sign"]);
  return new Uint8Array(await crypto.subtle.sign("HMAC", imported, message));
}

function modPow(base, exponent, modulus) {
  let result = 1n;
  base %= modulus;
  while (exponent > 0n) {
    if (exponent & 1n) result = (result * base) % modulus;
    exponent >>= 1n;
    base = (base * base) % modulus;
  }
  return result;
}

function concat(...parts) {
  const joined = new Uint8Array(parts.reduce((total, part) => total + part.length, 0));
  let offset = 0;
  for (const part of parts) {
    joined.set(part, offset);
    offset += part.length;
  }
  return joined;
}

// The client's secret a and public A = g^a mod N (A mod N must not be 0); `a` only for tests.
export function srpStart(a) {
  let secret = a;
  if (secret === undefined) {
    const random = crypto.getRandomValues(new Uint8Array(128));
    secret = BigInt("0x" + bytesToHex(random)) % N;
  }
  const A = modPow(G, secret, N);
  if (A % N === 0n) throw new Error("SRP: A is 0 mod N");
  return { a: secret, A: A, srpA: A.toString(16) };
}

// The 16-byte key both sides derive: HKDF of S = (B - k g^x)^(a + u x) mod N.
export async function passwordAuthenticationKey(start, poolId, userId, password, saltHex, bHex) {
  const B = BigInt("0x" + bHex);
  if (B % N === 0n) throw new Error("SRP: B is 0 mod N");
  const k = BigInt("0x" + (await sha256Hex(hexToBytes(padHex(N) + padHex(G)))));
  const u = BigInt("0x" + (await sha256Hex(hexToBytes(padHex(start.A) + padHex(B)))));
  if (u === 0n) throw new Error("SRP: u is 0");
  const identity = await sha256Hex(new TextEncoder().encode(poolId.split("_")[1] + userId + ":" + password));
  const x = BigInt("0x" + (await sha256Hex(hexToBytes(padHex(saltHex) + identity.padStart(64, "0")))));
  const base = (((B - k * modPow(G, x, N)) % N) + N) % N;
  const S = modPow(base, start.a + u * x, N);
  const prk = await hmac(hexToBytes(padHex(u)), hexToBytes(padHex(S)));
  return (await hmac(prk, concat(INFO, new Uint8Array([1])))).slice(0, 16);
}

// "Tue Mar 4 05:06:07 UTC 2026": the day of the month unpadded, as Cognito expects it.
export function cognitoTimestamp(date) {
  const two = (value) => String(value).padStart(2, "0");
  return (
    DAYS[date.getUTCDay()] + " " + MONTHS[date.getUTCMonth()] + " " + date.getUTCDate() + " " +
    two(date.getUTCHours()) + ":" + two(date.getUTCMinutes()) + ":" + two(date.getUTCSeconds()) +
    " UTC " + date.getUTCFullYear()
  );
}

// The PASSWORD_VERIFIER challenge's answer (ChallengeResponses) for Cognito's ChallengeParameters.
export async function passwordVerifier(start, poolId, password, parameters, now) {
  const userId = parameters.USER_ID_FOR_SRP;
  const key = await passwordAuthenticationKey(start, poolId, userId, password, parameters.SALT, parameters.SRP_B);
  const timestamp = cognitoTimestamp(now || new Date());
  const secretBlock = Uint8Array.from(atob(parameters.SECRET_BLOCK), (c) => c.charCodeAt(0));
  const encoder = new TextEncoder();
  const message = concat(encoder.encode(poolId.split("_")[1]), encoder.encode(userId), secretBlock, encoder.encode(timestamp));
  const signature = btoa(String.fromCharCode(...(await hmac(key, message))));
  return {
    USERNAME: parameters.USERNAME || userId,
    PASSWORD_CLAIM_SECRET_BLOCK: parameters.SECRET_BLOCK,
    PASSWORD_CLAIM_SIGNATURE: signature,
    TIMESTAMP: timestamp,
  };
}
