// Drives the npm SDK `wechatpay-axios-plugin` against a base URL (the coupon-shim gateway).
//
//   node query.js JOB.json
//
// JOB: {baseURL, mchid, secret, serial, privateKey, certs: {serialOrPubKeyId: pem},
//       calls: [{v2: {...fields}} | {v3stock: {stock_id, stock_creator_mchid, wechatpay_serial}}]}
// Prints one JSON line per call: {"ok": true, "status", "data"} when the SDK accepted the
// answer (its own v2 sign check, or its v3 signature check), else {"ok": false, "code",
// "status", "message", "data"}. Only loopback addresses are ever given as baseURL.
'use strict';

const { readFileSync } = require('fs');
const { Wechatpay } = require('wechatpay-axios-plugin');

function outcome(res) {
  return { ok: true, status: res.status, data: res.data };
}

function failure(err) {
  const res = err.response || {};
  return {
    ok: false,
    code: err.code || null,
    status: res.status || null,
    message: String(err.message || err),
    data: typeof res.data === 'object' ? res.data : (res.data === undefined ? null : String(res.data)),
  };
}

async function main() {
  const job = JSON.parse(readFileSync(process.argv[2], 'utf8'));
  const wxpay = new Wechatpay({
    mchid: job.mchid,
    serial: job.serial,
    privateKey: job.privateKey,
    certs: job.certs,
    secret: job.secret,
    baseURL: job.baseURL,
    timeout: 20000,
  });
  for (const call of job.calls) {
    let line;
    try {
      if (call.v2) {
        // The same chained call as the PHP SDK's ->v2->mmpaymkttransfers->query_coupon_stock
        line = outcome(await wxpay.v2.mmpaymkttransfers.query_coupon_stock.post(call.v2));
      } else {
        // public-key mode callers name the WeChat Pay public key they verify with
        const { stock_id, stock_creator_mchid, wechatpay_serial } = call.v3stock;
        const headers = wechatpay_serial ? { 'Wechatpay-Serial': wechatpay_serial } : {};
        line = outcome(await wxpay.v3.marketing.favor.stocks._stock_id_.get({
          params: { stock_creator_mchid }, stock_id, headers,
        }));
      }
    } catch (err) {
      line = failure(err);
    }
    process.stdout.write(JSON.stringify(line) + '\n');
  }
}

main().catch((err) => { process.stderr.write(String(err && err.stack || err) + '\n'); process.exit(2); });
