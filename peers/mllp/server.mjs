// An independent MLLP receiver for the HL7 MDM contract suite's live mode.
//
// Everything HL7 is Medplum's: @medplum/hl7's Hl7Connection reads and writes the MLLP
// frames (VT ... FS CR) and parses each message; @medplum/core's Hl7Message.buildAck()
// composes every ACK (MSH with sender/receiver swapped, MSA-1 the code, MSA-2 the
// incoming MSH-10). This file only opens the TCP listener on a chosen host (Medplum's
// Hl7Server binds every interface), picks the ACK code, and records what it received.
//
// Usage: node server.mjs [--port N] [--host H] [--record FILE] [--rules FILE] [--enhanced]
//   env fallbacks: PEER_MLLP_PORT, PEER_MLLP_HOST, PEER_MLLP_RECORD, PEER_MLLP_RULES,
//                  PEER_MLLP_ENHANCED=1
//   --enhanced: Medplum's enhanced mode: a commit ACK (CA) for every message, then the
//             application ACK (AA/AE/AR) on the same connection
//   --record: append one JSON line per message ACKed: {at, control_id, type, ack_code, message}
//   --rules:  a JSON array of {"control_id": REGEX, "ack": "AE" | "AR"}: a message whose
//             MSH-10 matches the first such rule is answered with that code, others AA
// When listening it prints one JSON line on stdout: {"ready": true, "port": N, ...}.

import { appendFileSync, readFileSync } from 'node:fs';
import net from 'node:net';
import { parseArgs } from 'node:util';

import { Hl7Connection } from '@medplum/hl7';

const { values: args } = parseArgs({
  options: {
    port: { type: 'string', default: process.env.PEER_MLLP_PORT ?? '0' },
    host: { type: 'string', default: process.env.PEER_MLLP_HOST ?? '127.0.0.1' },
    record: { type: 'string', default: process.env.PEER_MLLP_RECORD },
    rules: { type: 'string', default: process.env.PEER_MLLP_RULES },
    enhanced: { type: 'boolean', default: process.env.PEER_MLLP_ENHANCED === '1' },
  },
});

function fail(message) {
  process.stderr.write(`mllp peer: ${message}\n`);
  process.exit(2);
}

let rules = [];
if (args.rules) {
  try {
    rules = JSON.parse(readFileSync(args.rules, 'utf8')).map((r) => {
      if (!['AE', 'AR'].includes(r.ack)) throw new Error('each rule needs ack AE or AR');
      return { match: new RegExp(r.control_id ?? '^$'), ack: r.ack };
    });
  } catch (err) {
    fail(`cannot read --rules ${args.rules}: ${err.message}`);
  }
}

const sockets = new Set();
const server = net.createServer((socket) => {
  sockets.add(socket);
  socket.on('close', () => sockets.delete(socket));
  const connection = new Hl7Connection(socket, 'utf-8', args.enhanced);
  connection.addEventListener('error', (event) => {
    process.stderr.write(`mllp peer: connection error: ${event.error?.message ?? event}\n`);
  });
  connection.addEventListener('message', ({ message }) => {
    const msh = message.getSegment('MSH');
    const controlId = msh?.getField(10)?.toString() ?? '';
    const ackCode = rules.find((r) => r.match.test(controlId))?.ack ?? 'AA';
    const ack = message.buildAck({ ackCode });
    if (args.record) {
      const line = {
        at: new Date().toISOString(),
        control_id: controlId,
        type: msh?.getField(9)?.toString() ?? '',
        ack_code: ackCode,
        message: message.toString(),
      };
      appendFileSync(args.record, JSON.stringify(line) + '\n'); // before the ACK: a reader sees it
    }
    connection.send(ack);
  });
});
server.on('error', (err) => fail(err.message));
server.listen(Number.parseInt(args.port, 10), args.host, () => {
  const { port } = server.address();
  process.stdout.write(JSON.stringify({ ready: true, host: args.host, port, rules: rules.length, enhanced: args.enhanced }) + '\n');
});
for (const sig of ['SIGTERM', 'SIGINT']) {
  process.on(sig, () => {
    for (const s of sockets) s.destroy();
    server.close(() => process.exit(0));
  });
}
