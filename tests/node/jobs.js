// BullMQ through shardproxy, driven by tests/integration/test_queue_libraries.py over stdin:
// each line "batch <k> <n>" adds n jobs (ids k-0 .. k-(n-1)) and answers, once every one of
// them completed or failed for good, one JSON line with what the worker saw. "end" closes.
// Job i of a batch: i % 10 == 0 fails on every attempt (2 attempts), i % 3 == 0 fails its
// first attempt only, the rest succeed at once. Keys carry the prefix {bull} (one backend).
const readline = require('node:readline');
const { Queue, Worker } = require('bullmq');

const port = Number(process.argv[2]);
const connection = { host: '127.0.0.1', port, maxRetriesPerRequest: null };
const prefix = '{bull}';
const runs = new Map();
const settled = new Map(); // job id -> 'completed' | 'failed'
let waiting = null; // { ids, resolve }

function check() {
  if (waiting && waiting.ids.every((id) => settled.has(id))) {
    const w = waiting;
    waiting = null;
    w.resolve();
  }
}

async function main() {
  const queue = new Queue('jobs', { connection, prefix });
  await queue.obliterate({ force: true });
  const worker = new Worker('jobs', async (job) => {
    const { i } = job.data;
    const n = (runs.get(job.id) || 0) + 1;
    runs.set(job.id, n);
    if (i % 10 === 0) throw new Error(`always ${job.id}`);
    if (i % 3 === 0 && n === 1) throw new Error(`once ${job.id}`);
    return i * 2;
  }, { connection, prefix, concurrency: 4 });
  worker.on('completed', (job, value) => {
    if (value !== job.data.i * 2) throw new Error(`bad value for ${job.id}`);
    settled.set(job.id, 'completed');
    check();
  });
  worker.on('failed', (job) => {
    if (job && job.attemptsMade >= job.opts.attempts) {
      settled.set(job.id, 'failed');
      check();
    }
  });
  worker.on('error', (err) => console.error(`worker error: ${err}`));
  const rl = readline.createInterface({ input: process.stdin });
  for await (const line of rl) {
    const [cmd, k, n] = line.trim().split(' ');
    if (cmd === 'end') break;
    const ids = [];
    const jobs = [];
    for (let i = 0; i < Number(n); i++) {
      const jobId = `${k}-${i}`;
      ids.push(jobId);
      jobs.push({ name: 'j', data: { i }, opts: { jobId, attempts: 2, backoff: { type: 'fixed', delay: 10 } } });
    }
    const done = new Promise((resolve) => { waiting = { ids, resolve }; });
    await queue.addBulk(jobs);
    check();
    await done;
    const report = { completed: 0, failed: 0, runs: {} };
    for (const id of ids) {
      report[settled.get(id)] += 1;
      report.runs[id] = runs.get(id);
    }
    report.counts = await queue.getJobCounts('waiting', 'active', 'delayed');
    console.log(JSON.stringify(report));
  }
  await worker.close();
  await queue.close();
}
main().then(() => process.exit(0), (e) => { console.error(e); process.exit(1); });
