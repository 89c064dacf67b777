// The aws-sdk-js-v3 client of the compatibility suite (tests/compat).
//
// usage: node probe.mjs PROVIDER STS_URL INTERVAL_SECS MAX_SECS
// PROVIDER: default (no credentials given: the client's own default chain),
// fromHttp, fromContainerMetadata, fromInstanceMetadata.
//
// One long-lived STSClient calls GetCallerIdentity every INTERVAL_SECS and
// prints one JSON line per call with the access key id the request was
// really signed with, read off the Authorization header by a middleware at
// the last step before sending.
import { readFileSync } from "node:fs";
import { STSClient, GetCallerIdentityCommand } from "@aws-sdk/client-sts";
import {
  fromHttp,
  fromContainerMetadata,
  fromInstanceMetadata,
} from "@aws-sdk/credential-providers";

const [provider, url, intervalArg, maxArg] = process.argv.slice(2);
const interval = Number(intervalArg) * 1000;
const most = Number(maxArg) * 1000;

const providers = {
  default: undefined,
  fromHttp: () => fromHttp({}),
  fromContainerMetadata: () => fromContainerMetadata(),
  fromInstanceMetadata: () => fromInstanceMetadata(),
};
if (!(provider in providers)) {
  console.error(`unknown provider ${provider}`);
  process.exit(64);
}

const pkg = (name) =>
  JSON.parse(
    readFileSync(new URL(`./node_modules/${name}/package.json`, import.meta.url)),
  ).version;
console.log(
  JSON.stringify({
    version: `client-sts ${pkg("@aws-sdk/client-sts")} / credential-providers ${pkg("@aws-sdk/credential-providers")}, node ${process.versions.node}`,
  }),
);

const config = { region: "us-east-1", endpoint: url };
if (providers[provider]) config.credentials = providers[provider]();
const sts = new STSClient(config);

let signedKey = null;
sts.middlewareStack.add(
  (next) => async (args) => {
    const auth = args.request?.headers?.authorization ?? "";
    const m = /Credential=([A-Z0-9]+)\//.exec(auth);
    signedKey = m ? m[1] : null;
    return next(args);
  },
  { step: "deserialize", name: "compatSignedKey", priority: "low" },
);

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const start = Date.now();
const calls = Math.floor(most / Math.max(interval, 50)) + 1;
for (let i = 0; i < calls && Date.now() - start < most; i++) {
  const t = Date.now() / 1000;
  signedKey = null;
  let line;
  try {
    const out = await sts.send(new GetCallerIdentityCommand({}));
    line = { t, ok: true, arn: out.Arn, key: signedKey };
  } catch (e) {
    line = { t, ok: false, key: signedKey, err: `${e.name}: ${e.message}` };
  }
  console.log(JSON.stringify(line));
  await sleep(interval);
}
