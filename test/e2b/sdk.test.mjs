// Drives E2B's own JavaScript SDK (the pinned `e2b` package, public API
// only) against Tartarus's E2B API, checking each result's content.
// cmd/tartarus/e2b_e2e_test.go starts a real server and runs this with:
//   E2B_API_URL, E2B_SANDBOX_URL  the E2B listener (https, NODE_EXTRA_CA_CERTS trusts its CA)
//   E2B_API_KEY                   a key in the e2b_ form
//   OTHER_TENANT_KEY              a key of another tenant
//   RUN                           a value unique to this run (metadata filter)
//   BENCH=1                       also measure and print one "bench" JSON line
// Each check prints "ok - NAME"; the first failure prints "not ok - NAME"
// and exits 1.
import assert from 'node:assert/strict'
import { Sandbox, CommandExitError, SandboxNotFoundError, AuthenticationError } from 'e2b'

const run = process.env.RUN ?? String(Date.now())
const otherKey = process.env.OTHER_TENANT_KEY
const enc = new TextEncoder()
const dec = new TextDecoder()

async function check(name, fn) {
  const t0 = performance.now()
  try {
    await fn()
  } catch (err) {
    console.log(`not ok - ${name}: ${err?.stack ?? err}`)
    process.exit(1)
  }
  console.log(`ok - ${name} (${Math.round(performance.now() - t0)} ms)`)
}

async function until(what, cond, ms = 30_000) {
  const end = Date.now() + ms
  while (Date.now() < end) {
    if (await cond()) return
    await new Promise((r) => setTimeout(r, 100))
  }
  throw new Error(`timed out after ${ms} ms waiting for ${what}`)
}

async function rejects(promise, pred, what) {
  try {
    await promise
  } catch (err) {
    assert.ok(pred(err), `${what}: wrong error ${err?.constructor?.name}: ${err?.message}`)
    return err
  }
  throw new Error(`${what}: did not fail`)
}

let sbx
await check('Sandbox.create with metadata and a timeout', async () => {
  // A slow shared test machine: allow more than the SDK's 60 s a request.
  sbx = await Sandbox.create('base', { metadata: { suite: 'e2b-sdk', run }, envs: { SANDBOX_WIDE: 'yes' }, timeoutMs: 600_000, requestTimeoutMs: 180_000 })
  assert.match(sbx.sandboxId, /\S/)
  const info = await sbx.getInfo()
  assert.equal(info.sandboxId, sbx.sandboxId)
  assert.equal(info.templateId, 'base')
  assert.deepEqual(info.metadata, { suite: 'e2b-sdk', run })
  assert.equal(info.state, 'running')
  // The lifetime counts from the create, which a loaded machine may take
  // minutes to finish.
  const life = info.endAt.getTime() - info.startedAt.getTime()
  assert.ok(life >= 590_000 && life <= 610_000, `startedAt ${info.startedAt.toISOString()} endAt ${info.endAt.toISOString()}: not 10 minutes apart`)
  assert.ok(info.endAt.getTime() > Date.now(), 'endAt is in the future')
})

await check('commands.run streams stdout and stderr', async () => {
  const out = []
  const errs = []
  const r = await sbx.commands.run('echo out1; echo err1 >&2; echo out2', {
    onStdout: (d) => out.push(d),
    onStderr: (d) => errs.push(d),
  })
  assert.equal(r.exitCode, 0)
  assert.equal(r.stdout, 'out1\nout2\n')
  assert.equal(r.stderr, 'err1\n')
  assert.equal(out.join(''), 'out1\nout2\n')
  assert.equal(errs.join(''), 'err1\n')
})

await check('commands.run: a nonzero exit is a CommandExitError', async () => {
  const err = await rejects(sbx.commands.run('echo bad >&2; exit 3'), (e) => e instanceof CommandExitError, 'exit 3')
  assert.equal(err.exitCode, 3)
  assert.equal(err.stderr, 'bad\n')
})

await check('commands.run with envs and cwd', async () => {
  const r = await sbx.commands.run('echo "$GREETING from $(pwd), sandbox-wide $SANDBOX_WIDE"', { envs: { GREETING: 'hi' }, cwd: '/tmp' })
  assert.equal(r.stdout, 'hi from /tmp, sandbox-wide yes\n')
})

await check('a background command reattached with commands.connect and killed', async () => {
  const h = await sbx.commands.run('i=0; while true; do i=$((i+1)); echo tick $i; sleep 0.2; done', { background: true })
  assert.ok(h.pid > 0)
  await until('first tick', () => h.stdout.includes('tick 1'))
  await h.disconnect()
  const listed = await sbx.commands.list()
  assert.ok(listed.some((p) => p.pid === h.pid), `pid ${h.pid} not in commands.list`)
  let seen = ''
  const again = await sbx.commands.connect(h.pid, { onStdout: (d) => { seen += d } })
  await until('ticks after reattaching', () => /tick \d+/.test(seen))
  assert.equal(await sbx.commands.kill(h.pid), true)
  await rejects(again.wait(), (e) => e instanceof CommandExitError, 'wait after kill')
  await until('the killed command to leave commands.list', async () => !(await sbx.commands.list()).some((p) => p.pid === h.pid))
  assert.equal(await sbx.commands.kill(h.pid), false)
})

await check('sendStdin to a running command', async () => {
  const h = await sbx.commands.run('read line; echo "got:$line"', { background: true, stdin: true })
  await sbx.commands.sendStdin(h.pid, 'hello stdin\n')
  const r = await h.wait()
  assert.equal(r.stdout, 'got:hello stdin\n')
})

await check('a PTY runs a shell command and is resized', async () => {
  let data = ''
  const term = await sbx.pty.create({ cols: 80, rows: 24, onData: (d) => { data += dec.decode(d) } })
  assert.ok(term.pid > 0)
  await sbx.pty.sendInput(term.pid, enc.encode('stty size; echo pty-$((6*7))\n'))
  await until('the first size and the output', () => data.includes('24 80') && data.includes('pty-42'))
  await sbx.pty.resize(term.pid, { cols: 100, rows: 40 })
  await sbx.pty.sendInput(term.pid, enc.encode('stty size\n'))
  await until('the new size', () => data.includes('40 100'))
  await sbx.pty.sendInput(term.pid, enc.encode('exit 0\n'))
  const r = await term.wait()
  assert.equal(r.exitCode, 0)
})

await check('files.write/read/list/makeDir/rename/remove/exists', async () => {
  const info = await sbx.files.write('/tmp/e2b/a.txt', 'hello files')
  assert.equal(info.path, '/tmp/e2b/a.txt')
  assert.equal(info.name, 'a.txt')
  assert.equal(await sbx.files.read('/tmp/e2b/a.txt'), 'hello files')
  assert.equal(await sbx.files.makeDir('/tmp/e2b/sub/deeper'), true)
  assert.equal(await sbx.files.makeDir('/tmp/e2b/sub/deeper'), false)
  const list = await sbx.files.list('/tmp/e2b')
  const names = list.map((e) => `${e.name}:${e.type}`).sort()
  assert.deepEqual(names, ['a.txt:file', 'sub:dir'])
  assert.equal(list.find((e) => e.name === 'a.txt').size, 11)
  const deep = await sbx.files.list('/tmp/e2b', { depth: 2 })
  assert.ok(deep.some((e) => e.path === '/tmp/e2b/sub/deeper'), 'depth 2 lists sub/deeper')
  const moved = await sbx.files.rename('/tmp/e2b/a.txt', '/tmp/e2b/b.txt')
  assert.equal(moved.path, '/tmp/e2b/b.txt')
  assert.equal(await sbx.files.exists('/tmp/e2b/a.txt'), false)
  assert.equal(await sbx.files.exists('/tmp/e2b/b.txt'), true)
  assert.equal(await sbx.files.read('/tmp/e2b/b.txt'), 'hello files')
  await sbx.files.remove('/tmp/e2b/b.txt')
  assert.equal(await sbx.files.exists('/tmp/e2b/b.txt'), false)
  const bytes = new Uint8Array([0, 1, 2, 250, 255])
  await sbx.files.write('/tmp/e2b/bin', bytes.buffer)
  assert.deepEqual(await sbx.files.read('/tmp/e2b/bin', { format: 'bytes' }), bytes)
  await sbx.files.write('/tmp/e2b/gz/z.txt', 'sent gzipped', { gzip: true })
  assert.equal(await sbx.files.read('/tmp/e2b/gz/z.txt'), 'sent gzipped')
  const many = await sbx.files.write([{ path: '/tmp/e2b/m1', data: 'one' }, { path: '/tmp/e2b/m2', data: 'two' }])
  assert.deepEqual(many.map((f) => f.path), ['/tmp/e2b/m1', '/tmp/e2b/m2'])
  assert.equal(await sbx.files.read('/tmp/e2b/m2'), 'two')
})

await check('files.watchDir sees a file appear', async () => {
  await sbx.files.makeDir('/tmp/e2b/watched')
  const events = []
  const w = await sbx.files.watchDir('/tmp/e2b/watched', (e) => events.push(e))
  await sbx.files.write('/tmp/e2b/watched/new.txt', 'x')
  await until('a create event for new.txt', () => events.some((e) => e.name === 'new.txt' && e.type === 'create'))
  await w.stop()
})

await check('Sandbox.list filtered by metadata', async () => {
  const other = await Sandbox.create('base', { metadata: { suite: 'e2b-sdk', run: run + '-other' }, timeoutMs: 300_000 })
  try {
    const page = await Sandbox.list({ query: { metadata: { suite: 'e2b-sdk', run } } }).nextItems()
    assert.deepEqual(page.map((s) => s.sandboxId), [sbx.sandboxId])
    assert.equal(page[0].state, 'running')
    const both = (await Sandbox.list({ query: { metadata: { suite: 'e2b-sdk' } } }).nextItems()).map((s) => s.sandboxId)
    assert.ok(both.includes(sbx.sandboxId) && both.includes(other.sandboxId), `suite filter: ${both}`)
  } finally {
    await other.kill()
  }
})

await check('setTimeout and getInfo', async () => {
  await sbx.setTimeout(120_000)
  const info = await sbx.getInfo()
  const left = info.endAt.getTime() - Date.now()
  assert.ok(left > 90_000 && left <= 120_000, `endAt ${info.endAt.toISOString()} is not about 2 minutes away`)
  await sbx.setTimeout(600_000)
})

await check('getMetrics', async () => {
  let m = []
  await until('a metrics sample', async () => (m = await sbx.getMetrics()).length > 0, 30_000)
  assert.ok(m[0].cpuCount >= 1, `cpuCount ${m[0].cpuCount}`)
  assert.ok(m[0].memTotal > m[0].memUsed && m[0].memUsed > 0, `memory ${m[0].memUsed}/${m[0].memTotal}`)
  assert.ok(m[0].timestamp instanceof Date && !isNaN(m[0].timestamp), 'timestamp')
})

await check('pause, then Sandbox.connect with a running process and a file kept', async () => {
  const h = await sbx.commands.run('sleep 1000', { background: true })
  await h.disconnect()
  await sbx.files.write('/tmp/e2b/kept.txt', 'kept across pause')
  assert.equal(await sbx.pause(), true)
  assert.equal((await sbx.getInfo()).state, 'paused')
  assert.deepEqual((await Sandbox.list({ query: { metadata: { run }, state: ['paused'] } }).nextItems()).map((s) => s.sandboxId), [sbx.sandboxId])
  const back = await Sandbox.connect(sbx.sandboxId)
  assert.equal((await back.getInfo()).state, 'running')
  assert.ok((await back.commands.list()).some((p) => p.pid === h.pid), 'the sleep survived the pause')
  assert.equal(await back.files.read('/tmp/e2b/kept.txt'), 'kept across pause')
  const r = await back.commands.run('echo after pause')
  assert.equal(r.stdout, 'after pause\n')
})

await check('bad input gets E2B-shaped errors and loses nothing', async () => {
  const e1 = await rejects(Sandbox.create('no-such-template', { timeoutMs: 60_000 }), (e) => /404|400/.test(e.message), 'unknown template')
  assert.match(e1.message, /no-such-template/)
  await rejects(Sandbox.list({ apiKey: 'e2b_not-a-key' }).nextItems(), (e) => e instanceof AuthenticationError, 'malformed key')
  if (otherKey) {
    await rejects(Sandbox.getInfo(sbx.sandboxId, { apiKey: otherKey }), (e) => e instanceof SandboxNotFoundError, "another tenant's getInfo")
    assert.equal(await Sandbox.kill(sbx.sandboxId, { apiKey: otherKey }), false)
    await rejects(Sandbox.connect(sbx.sandboxId, { apiKey: otherKey }), (e) => e instanceof SandboxNotFoundError, "another tenant's connect")
    const theirs = await Sandbox.list({ apiKey: otherKey }).nextItems()
    assert.ok(!theirs.some((s) => s.sandboxId === sbx.sandboxId), "another tenant lists this tenant's sandbox")
  }
  // Nothing was lost: the sandbox still runs and holds its file.
  assert.equal((await sbx.getInfo()).state, 'running')
  assert.equal(await sbx.files.read('/tmp/e2b/kept.txt'), 'kept across pause')
})

if (process.env.BENCH === '1') {
  await check('benchmark', async () => {
    const ms = (t0) => performance.now() - t0
    const create = []
    for (let i = 0; i < 3; i++) {
      const t0 = performance.now()
      const s = await Sandbox.create('base', { timeoutMs: 120_000, requestTimeoutMs: 180_000 })
      await s.commands.run('true', { timeoutMs: 180_000 })
      create.push(ms(t0))
      await s.kill()
    }
    const rtt = []
    for (let i = 0; i < 20; i++) {
      const t0 = performance.now()
      await sbx.commands.run('true')
      rtt.push(ms(t0))
    }
    const mb = new Uint8Array(1 << 20).map((_, i) => i % 251)
    const write = []
    const read = []
    for (let i = 0; i < 5; i++) {
      let t0 = performance.now()
      await sbx.files.write('/tmp/bench.bin', mb.buffer)
      write.push(ms(t0))
      t0 = performance.now()
      const got = await sbx.files.read('/tmp/bench.bin', { format: 'bytes' })
      read.push(ms(t0))
      assert.equal(got.length, mb.length)
    }
    console.log('bench ' + JSON.stringify({ create_first_command_ms: create, command_rtt_ms: rtt, write_1mb_ms: write, read_1mb_ms: read }))
  })
}

await check('kill', async () => {
  await sbx.kill()
  await rejects(sbx.getInfo(), (e) => e instanceof SandboxNotFoundError, 'getInfo after kill')
})
