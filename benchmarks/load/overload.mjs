// Load generator for benchmarks/overload.py: autocannon (https://github.com/mcollina/autocannon) driven
// through its programmatic API, printing one JSON object on stdout with every request's latency by HTTP status.
//
//   node overload.mjs '{"url": "http://127.0.0.1:8000", "mode": "probe", "seconds": 5, "connections": 4}'
//   node overload.mjs '{"url": ..., "mode": "open", "seconds": 10, "missRate": 275, "hitRate": 20,
//                       "hitQuery": "a large orange square", "spread": 25, "timeoutS": 30}'
//
// probe: closed loop, `connections` clients back to back, every request a new query: the sustainable miss rate.
// open:  a fixed offered rate of distinct-query misses plus a slower stream of one cached query (and, with
//        `floorRate`, of GET /healthz: the answer time of the cheapest request under the same load). autocannon's
//        rate limit sends each connection's per-second quota at the start of its second, so one instance at
//        275/s would be one burst of 275 a second; the stream is split into `spread` instances of one request
//        per connection per second, started 1000/spread ms apart (sub-bursts of rate/spread). A request waits
//        for its connection's previous answer, so the offered rate only holds while answers take < 1 s (true
//        whenever shedding works; the no-shedding baseline then offers less: see `answered` / `elapsed_s`).

import autocannon from 'autocannon'
import { createRequire } from 'node:module'
import { monitorEventLoopDelay } from 'node:perf_hooks'

const cfg = JSON.parse(process.argv[2] ?? '{}')
const runId = Date.now().toString(36)

function searchPath (query, k) {
  return `/search?k=${k}&q=${encodeURIComponent(query)}`
}

function newStats () {
  return { answered: 0, statuses: {}, errors: 0, timeouts: 0, started: performance.now(), ended: 0 }
}

// one autocannon instance; resolves when its clients are done (every request answered, failed or timed out)
function instance (stats, opts) {
  return new Promise((resolve, reject) => {
    const tracker = autocannon(opts, (err, result) => {
      if (err) return reject(err)
      stats.errors += result.errors - result.timeouts // connection errors; a timeout counts once, below
      stats.timeouts += result.timeouts
      resolve()
    })
    tracker.on('response', (_client, statusCode, _bytes, responseTime) => {
      stats.answered++;
      (stats.statuses[statusCode] ??= []).push(Math.round(responseTime * 100) / 100)
    })
  })
}

function missRequests (prefix, k) {
  let n = 0
  return [{ method: 'GET', setupRequest: (req) => ({ ...req, path: searchPath(`${prefix} ${runId} ${++n}`, k) }) }]
}

async function probe () {
  const stats = newStats()
  await instance(stats, {
    url: cfg.url, connections: cfg.connections ?? 4, duration: cfg.seconds, timeout: cfg.timeoutS ?? 30,
    requests: missRequests('calibration', cfg.k ?? 10)
  })
  stats.ended = performance.now()
  return { miss: stats }
}

// `rate` requests per second for `seconds`, spread over `spread` staggered instances
async function openStream (rate, seconds, spread, requests) {
  const stats = newStats()
  const total = Math.round(rate)
  const parts = Math.max(1, Math.min(spread, total))
  const runs = []
  for (let i = 0; i < parts; i++) {
    const perSecond = Math.floor(total / parts) + (i < total % parts ? 1 : 0)
    const start = (i * 1000) / parts
    runs.push(new Promise((resolve) => setTimeout(resolve, start)).then(() => instance(stats, {
      url: cfg.url, connections: perSecond, overallRate: perSecond, amount: perSecond * seconds,
      timeout: cfg.timeoutS ?? 30, requests
    })))
  }
  await Promise.all(runs)
  stats.ended = performance.now()
  return stats
}

async function open () {
  const k = cfg.k ?? 10
  const spread = cfg.spread ?? 25
  const [miss, hit, floor] = await Promise.all([
    openStream(cfg.missRate, cfg.seconds, spread, missRequests('overload', k)),
    cfg.hitRate > 0 ? openStream(cfg.hitRate, cfg.seconds, spread, [{ method: 'GET', path: searchPath(cfg.hitQuery, k) }]) : null,
    cfg.floorRate > 0 ? openStream(cfg.floorRate, cfg.seconds, spread, [{ method: 'GET', path: '/healthz' }]) : null
  ])
  return Object.fromEntries(Object.entries({ miss, hit, floor }).filter(([, stats]) => stats !== null))
}

const lag = monitorEventLoopDelay({ resolution: 5 })
lag.enable()
const cpuStart = process.cpuUsage()
const wallStart = performance.now()
const streams = cfg.mode === 'probe' ? await probe() : await open()
lag.disable()
const cpu = process.cpuUsage(cpuStart)
for (const stats of Object.values(streams)) {
  stats.elapsed_s = Math.round(stats.ended - stats.started) / 1000
  delete stats.started
  delete stats.ended
}
process.stdout.write(JSON.stringify({
  generator: {
    tool: 'autocannon',
    version: createRequire(import.meta.url)('autocannon/package.json').version,
    node: process.version,
    wall_s: Math.round(performance.now() - wallStart) / 1000,
    cpu_s: Math.round((cpu.user + cpu.system) / 1e3) / 1e3,
    loop_delay_p99_ms: Math.round(lag.percentile(99) / 1e4) / 100
  },
  streams
}) + '\n')
