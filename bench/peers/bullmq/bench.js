'use strict';
/*
 * BullMQ peer of geventsched's benchmark: the same no-op workload as the Python peers, through
 * BullMQ on Node.js. bench/peers/peer_bullmq.py installs package.json's pins into a cache directory
 * and runs this script with NODE_PATH pointing there; it prints one JSON line.
 *
 *   node bench.js --redis-url redis://127.0.0.1:6379/15 --jobs 50000 --concurrency 100
 *
 * One Worker process (this script with --role worker, concurrency 100), as the Python peers have.
 * The producer (this process):
 *
 * - warm-up: --warmup sequential round trips (they also show that the worker is up);
 * - throughput, end to end: --jobs no-op jobs added with Queue.addBulk, in chunks of CHUNK, while a
 *   QueueEvents reader takes every job's 'completed' event, which carries its return value: the
 *   clock runs from the first add to the last result received;
 * - latency: --round-trips sequential round trips, Queue.add then Job.waitUntilFinished;
 * - worker only (the figure BullMQ publishes): --jobs jobs added to a second queue with no worker,
 *   then a fresh Worker process drains them; its clock runs from Worker.run() to its last
 *   'completed' event, connecting left out.
 *
 * Both timed phases also report CPU per job (producer, worker, Redis: INFO's used_cpu_user + sys) and
 * Redis calls per job (INFO commandstats, which counts the commands scripts run), as `geventsched
 * bench` does; the Redis figures are the whole server's, so they mean most on a private one.
 *
 * Keys: BullMQ's prefix is the run's tag (so is the queue name), in the peer's own db; at the end
 * every key carrying the tag is deleted. The events stream is sized to hold a whole run's events, so
 * that a QueueEvents reader that falls behind loses no 'completed' event to trimming.
 */

const { fork } = require('child_process');
const fs = require('fs');
const path = require('path');
const { performance } = require('perf_hooks');
const { Queue, QueueEvents, Worker } = require('bullmq');
const IORedis = require('ioredis');

const CHUNK = 1000; // jobs per addBulk
const EVENTS_PER_JOB = 5; // added, waiting, active, completed and some slack

const FLAGS = {
  '--redis-url': ['redisUrl', String],
  '--jobs': ['jobs', Number],
  '--round-trips': ['roundTrips', Number],
  '--concurrency': ['concurrency', Number],
  '--warmup': ['warmup', Number],
  '--result-timeout': ['resultTimeout', Number],
  '--timeout': ['timeout', Number],
  '--tag': ['tag', String],
  '--role': ['role', String],
  '--queue': ['queue', String],
};

function parseArgs(argv) {
  const args = {
    redisUrl: 'redis://127.0.0.1:6379/15', jobs: 2000, roundTrips: 200, concurrency: 100, warmup: 20,
    resultTimeout: 60, timeout: 280, tag: null, role: 'producer', queue: null,
  };
  for (let i = 0; i < argv.length; i += 2) {
    const flag = FLAGS[argv[i]];
    if (!flag || i + 1 >= argv.length) usage(`unknown or incomplete argument ${argv[i]}`);
    const [key, type] = flag;
    args[key] = type(argv[i + 1]);
    if (type === Number && !(args[key] >= 0)) usage(`${argv[i]} wants a number, not ${argv[i + 1]}`);
  }
  if (args.jobs < 1 || args.roundTrips < 1 || args.concurrency < 1) usage('--jobs, --round-trips and --concurrency must be at least 1');
  if (!['producer', 'worker', 'drain'].includes(args.role)) usage(`--role ${args.role}?`);
  args.tag = args.tag || `gsbench${process.pid}x${Math.random().toString(16).slice(2, 8)}`;
  args.queue = args.queue || args.tag;
  return args;
}

function usage(message) {
  process.stderr.write(`bench.js: error: ${message}\n`);
  process.exit(2);
}

/** ioredis options for a redis:// or rediss:// URL (host, port, db, user, password). */
function connection(url) {
  const u = new URL(url);
  if (u.protocol !== 'redis:' && u.protocol !== 'rediss:') usage(`--redis-url must be redis:// or rediss://, not ${u.protocol}//`);
  const opts = {
    host: u.hostname || '127.0.0.1',
    port: Number(u.port || 6379),
    db: Number(u.pathname.slice(1) || 0),
    maxRetriesPerRequest: null, // what BullMQ asks of a Worker's connection
  };
  if (u.username) opts.username = decodeURIComponent(u.username);
  if (u.password) opts.password = decodeURIComponent(u.password);
  if (u.protocol === 'rediss:') opts.tls = {};
  return opts;
}

function bullmqVersion() {
  // The package's exports hide its package.json; it sits two levels above the CommonJS entry point.
  const file = path.join(path.dirname(require.resolve('bullmq')), '..', '..', 'package.json');
  return JSON.parse(fs.readFileSync(file, 'utf8')).version;
}

const now = () => performance.now() / 1000;

/** Nearest-rank percentiles in ms of seconds, as common.summarize_ms computes them. */
function summarizeMs(seconds) {
  const s = seconds.map((x) => x * 1000).sort((a, b) => a - b);
  const at = (q) => s[Math.max(1, Math.ceil((s.length * q) / 100)) - 1];
  const r = (x) => Math.round(x * 1000) / 1000;
  return { p50: r(at(50)), p90: r(at(90)), p99: r(at(99)), max: r(s[s.length - 1]) };
}

// ---- CPU and Redis commands per job ---------------------------------------------------------------

/** Seconds of CPU a process used (Linux /proc; clock ticks of 10 ms), or null elsewhere. */
function processCpu(pid) {
  try {
    const fields = fs.readFileSync(`/proc/${pid}/stat`, 'utf8').split(') ')[1].split(' ');
    return (Number(fields[11]) + Number(fields[12])) / 100;
  } catch (err) {
    return null;
  }
}

/** Redis's CPU seconds and its calls per command since it started. */
async function serverStats(client) {
  const cpu = await client.info('cpu');
  const field = (name) => Number((cpu.match(new RegExp(`^${name}:([0-9.]+)`, 'm')) || [0, 0])[1]);
  const calls = {};
  for (const [, name, n] of (await client.info('commandstats')).matchAll(/^cmdstat_(\S+?):calls=(\d+)/gm)) {
    if (name !== 'info') calls[name] = Number(n); // the meter's own calls are no job's work
  }
  return { cpu: field('used_cpu_user') + field('used_cpu_sys'), calls };
}

/** Starts counting; ``per_job(jobs)`` gives {cpu_us_per_job: {producer, worker, redis}, redis_ops_per_job,
 * redis_commands_per_job}. ``workerPid``: the worker process, or null for none. */
async function meter(client, workerPid) {
  const start = { producer: process.cpuUsage(), worker: workerPid && processCpu(workerPid), server: await serverStats(client) };
  return async (jobs, endWorkerCpu) => {
    const producer = process.cpuUsage(start.producer);
    const server = await serverStats(client);
    const us = (seconds) => (seconds === null || seconds === undefined ? null : round((seconds * 1e6) / jobs, 2));
    const worker = start.worker === null || endWorkerCpu === null ? null : endWorkerCpu - start.worker;
    const commands = {};
    let total = 0;
    for (const [name, n] of Object.entries(server.calls)) {
      const calls = n - (start.server.calls[name] || 0);
      if (calls > 0) {
        commands[name] = Number((calls / jobs).toPrecision(4));
        total += calls;
      }
    }
    return {
      cpu_us_per_job: { producer: us((producer.user + producer.system) / 1e6), worker: us(worker),
        redis: us(server.cpu - start.server.cpu) },
      redis_ops_per_job: round(total / jobs, 3),
      redis_commands_per_job: Object.fromEntries(Object.entries(commands).sort((a, b) => b[1] - a[1])),
    };
  };
}

function noops(count) {
  return Array.from({ length: count }, () => ({ name: 'noop', data: {} }));
}

// ---- the worker processes -----------------------------------------------------------------------

async function runWorker(args) {
  const worker = new Worker(args.queue, async () => null, {
    connection: connection(args.redisUrl), prefix: args.tag, concurrency: args.concurrency, autorun: false,
  });
  const stop = async () => {
    await worker.close();
    process.exit(0);
  };
  process.on('SIGTERM', stop);
  process.on('disconnect', stop); // the producer went away
  process.on('message', (msg) => msg && msg.stop && stop());
  worker.on('error', (err) => process.stderr.write(`worker error: ${err.message}\n`));
  await worker.waitUntilReady();
  if (args.role === 'drain') {
    let done = 0;
    let failed = 0;
    let started = 0;
    const count = () => {
      done += 1;
      if (done === args.jobs) process.send({ drained: done, failed, seconds: now() - started, cpu: processCpu(process.pid) });
    };
    worker.on('completed', count);
    worker.on('failed', () => { failed += 1; count(); });
    started = now();
  } else {
    process.send({ ready: true });
  }
  worker.run().catch((err) => {
    process.stderr.write(`worker stopped: ${err.message}\n`);
    process.exit(1);
  });
}

/** Fork this script as a worker: ``message`` resolves with its first message that has the key
 * ``first``, ``exited`` rejects when it exits (both reject if it exits before answering). */
function startWorker(args, role, queue, first) {
  const argv = ['--role', role, '--queue', queue, '--tag', args.tag, '--redis-url', args.redisUrl,
    '--concurrency', String(args.concurrency), '--jobs', String(args.jobs)];
  const child = fork(__filename, argv, { stdio: ['ignore', 'inherit', 'inherit', 'ipc'] });
  const exited = new Promise((_, reject) => {
    child.on('exit', (code, signal) => reject(new Error(`the ${role} worker exited (${signal || code})`)));
    child.on('error', reject);
  });
  const message = Promise.race([
    new Promise((resolve) => child.on('message', (msg) => msg && msg[first] !== undefined && resolve(msg))),
    exited,
  ]);
  exited.catch(() => {}); // awaited only while the worker must be there
  message.catch(() => {});
  return { child, message, exited };
}

async function stopWorker(worker) {
  const { child } = worker;
  if (child.exitCode !== null || child.signalCode !== null) return;
  const exited = new Promise((resolve) => child.once('exit', resolve));
  child.kill('SIGTERM');
  const timer = setTimeout(() => child.kill('SIGKILL'), 15000);
  await exited;
  clearTimeout(timer);
}

// ---- the producer's measurements ----------------------------------------------------------------

function within(promise, seconds, what) {
  let timer;
  const timeout = new Promise((_, reject) => {
    timer = setTimeout(() => reject(new Error(`${what}: nothing after ${seconds} s`)), seconds * 1000);
  });
  return Promise.race([promise, timeout]).finally(() => clearTimeout(timer));
}

async function roundTrips(queue, events, count, timeout) {
  const samples = [];
  for (let i = 0; i < count; i += 1) {
    const t0 = now();
    const job = await queue.add('noop', {});
    await job.waitUntilFinished(events, timeout * 1000);
    samples.push(now() - t0);
  }
  return samples;
}

/** addBulk every job, take every 'completed' event: [seconds, per-job latencies, failed, per-job costs]. */
async function throughput(queue, events, jobs, worker, timeout, client) {
  const submitted = new Map(); // job id -> when its chunk was added
  const early = new Map(); // job id -> when it finished, heard before its addBulk returned
  const latencies = [];
  let failed = 0;
  let finish;
  const allDone = new Promise((resolve) => { finish = resolve; });
  const heard = (jobId, ok) => {
    const t = now();
    const added = submitted.get(jobId);
    if (added === undefined) {
      early.set(jobId, [t, ok]);
      return;
    }
    submitted.delete(jobId);
    record(t - added, ok);
  };
  const record = (latency, ok) => {
    latencies.push(latency);
    if (!ok) failed += 1;
    if (latencies.length === jobs) finish();
  };
  const onCompleted = ({ jobId }) => heard(jobId, true);
  const onFailed = ({ jobId }) => heard(jobId, false);
  events.on('completed', onCompleted);
  events.on('failed', onFailed);
  try {
    const costs = await meter(client, worker.child.pid);
    const start = now();
    for (let i = 0; i < jobs; i += CHUNK) {
      const t = now();
      const added = await queue.addBulk(noops(Math.min(CHUNK, jobs - i)));
      for (const job of added) {
        const done = early.get(job.id);
        if (done === undefined) {
          submitted.set(job.id, t);
        } else {
          early.delete(job.id);
          record(done[0] - t, done[1]);
        }
      }
    }
    await within(Promise.race([allDone, worker.exited]),
      Math.max(timeout, 60 + jobs / 100), `throughput (${latencies.length} of ${jobs} results)`);
    const seconds = now() - start;
    return [seconds, latencies, failed, await costs(jobs, processCpu(worker.child.pid))];
  } finally {
    events.off('completed', onCompleted);
    events.off('failed', onFailed);
  }
}

/** The worker-only figure: jobs queued first, then a fresh worker process drains them. */
async function workerOnly(args, conn, client) {
  const name = `${args.tag}drain`;
  const queue = new Queue(name, { connection: conn, prefix: args.tag });
  try {
    for (let i = 0; i < args.jobs; i += CHUNK) await queue.addBulk(noops(Math.min(CHUNK, args.jobs - i)));
    const worker = startWorker(args, 'drain', name, 'drained');
    try {
      // Counted from before the worker starts: its connecting and start-up are in its CPU here.
      const costs = await meter(client, worker.child.pid);
      const got = await within(worker.message, Math.max(args.timeout, 60 + args.jobs / 100), 'worker-only drain');
      const { cpu_us_per_job: cpu, ...ops } = await costs(args.jobs, got.cpu);
      delete cpu.producer;
      return { jobs: args.jobs, seconds: round(got.seconds, 4), jobs_per_s: round(args.jobs / got.seconds, 1),
        failed: got.failed, cpu_us_per_job: cpu, ...ops };
    } finally {
      await stopWorker(worker);
    }
  } finally {
    await queue.close();
  }
}

function round(x, digits) {
  const f = 10 ** digits;
  return Math.round(x * f) / f;
}

/** Delete every key carrying the run's tag (in the peer's own db only); returns how many. */
async function cleanup(conn, tag) {
  const client = new IORedis(conn);
  try {
    let cursor = '0';
    let deleted = 0;
    do {
      const [next, keys] = await client.scan(cursor, 'MATCH', `*${tag}*`, 'COUNT', 1000);
      cursor = next;
      if (keys.length) deleted += await client.del(...keys);
    } while (cursor !== '0');
    return deleted;
  } finally {
    client.disconnect();
  }
}

async function produce(args) {
  const conn = connection(args.redisUrl);
  const maxLen = Math.max(10000, EVENTS_PER_JOB * (args.jobs + args.warmup + args.roundTrips));
  const queue = new Queue(args.queue, { connection: conn, prefix: args.tag, streams: { events: { maxLen } } });
  const events = new QueueEvents(args.queue, { connection: conn, prefix: args.tag });
  const client = new IORedis(conn); // the meters' connection
  let worker = null;
  try {
    await queue.waitUntilReady();
    await events.waitUntilReady();
    worker = startWorker(args, 'worker', args.queue, 'ready');
    await within(worker.message, 60, 'worker start');
    await roundTrips(queue, events, args.warmup, Math.max(args.resultTimeout, 60));
    const [seconds, burst, failed, costs] = await throughput(queue, events, args.jobs, worker, args.timeout, client);
    const samples = await roundTrips(queue, events, args.roundTrips, args.resultTimeout);
    await stopWorker(worker);
    worker = null;
    const drain = await workerOnly(args, conn, client);
    return {
      system: 'bullmq',
      version: bullmqVersion(),
      runtime: `node ${process.version}`,
      jobs: args.jobs,
      seconds: round(seconds, 4),
      jobs_per_s: round(args.jobs / seconds, 1),
      failed,
      latency_ms: summarizeMs(samples),
      round_trips: args.roundTrips,
      concurrency: args.concurrency,
      burst_latency_ms: summarizeMs(burst),
      results: 'every job added with addBulk, every result taken from a QueueEvents completed event',
      ...costs,
      worker_only: drain,
    };
  } finally {
    if (worker) await stopWorker(worker);
    await events.close();
    try {
      await cleanup(conn, args.tag);
    } catch (err) {
      process.stderr.write(`cleanup failed: ${err.message}\n`);
    }
    await queue.close();
    client.disconnect();
  }
}

async function main() {
  const args = parseArgs(process.argv.slice(2));
  if (args.role !== 'producer') return runWorker(args);
  // A hard stop for the whole run, whatever hangs.
  const alarm = setTimeout(() => fail(new Error(`run took longer than --timeout ${args.timeout} s`)), args.timeout * 1000);
  try {
    const out = await produce(args);
    process.stdout.write(`${JSON.stringify(out)}\n`);
  } catch (err) {
    fail(err);
  }
  clearTimeout(alarm);
  process.exit(0);
}

function fail(err) {
  const message = `${err.name || 'Error'}: ${err.message}`.split('\n')[0];
  process.stdout.write(`${JSON.stringify({ system: 'bullmq', error: message })}\n`);
  process.exit(1);
}

main().catch(fail);
