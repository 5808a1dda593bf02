// BullMQ's no-op drain, the reference the speed target was set against: adds N jobs
// (addBulk, 1,000 at a time) to a queue of its own, then one Worker with concurrency C
// drains them, each completed job removed. It records nothing in any database.
// Usage: node bench.js [N=100000] [C=1000]   (Redis at 127.0.0.1:6379)
const { Queue, Worker } = require('bullmq');
const N = parseInt(process.argv[2] || '100000');
const C = parseInt(process.argv[3] || '1000');
const connection = { host: '127.0.0.1', port: 6379 };
(async () => {
  const name = 'bench-' + Math.random().toString(36).slice(2, 8);
  const q = new Queue(name, { connection });
  const opts = { removeOnComplete: true, removeOnFail: true };
  let t = Date.now();
  for (let i = 0; i < N; i += 1000) {
    const jobs = [];
    for (let j = i; j < Math.min(N, i + 1000); j++) jobs.push({ name: 'noop', data: { prompt: 'bench job ' + j }, opts });
    await q.addBulk(jobs);
  }
  console.log(`add: ${N} jobs in ${((Date.now() - t) / 1000).toFixed(2)} s`);
  let done = 0;
  t = Date.now();
  await new Promise((resolve) => {
    const w = new Worker(name, async () => {}, { connection, concurrency: C });
    w.on('completed', () => { if (++done === N) { const s = (Date.now() - t) / 1000; console.log(`drain: ${N} jobs in ${s.toFixed(2)} s (${Math.round(N / s)} jobs/s; concurrency ${C})`); w.close().then(resolve); } });
  });
  await q.obliterate({ force: true });
  await q.close();
  process.exit(0);
})();
