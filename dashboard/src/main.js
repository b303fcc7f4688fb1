// Conveyor dashboard: one Alpine component. REST for reads and actions, two WebSockets for live
// state: /ws/dashboard/ (every visible task; operators also get queue events) and /ws/tasks/<id>/
// for the open drawer (log lines and metrics, replayed from after_seq on every reconnect).
import Alpine from 'alpinejs'
import './style.css'

const TOKENS = 'conveyor.tokens'
const FINAL = ['SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT']
const ACTIVE = ['PENDING', 'QUEUED', 'RUNNING']
const STATES = ['PENDING', 'QUEUED', 'RUNNING', ...FINAL]
const FAILED = ['FAILED', 'TIMED_OUT'] // what "Retry failed matching" re-runs
const MAX_TASKS = 1000 // rows kept in memory (newest first)
const PAGE = 100 // rows rendered at a time; "show more" adds a page
const DRAWER_TAIL = 1000 // events of a task's history the drawer replays when it opens
const LOG_KEEP = 500 // log lines the drawer keeps
const MAX_POINTS = 400 // metric points the drawer keeps (halved, every other one, when full)

function wsUrl(path) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${proto}//${location.host}${path}`
}

function backoff(attempt) {
  return Math.min(5000, 250 * 2 ** Math.min(attempt, 5)) * (0.75 + Math.random() / 2)
}

const sleep = (ms) => new Promise((resolve) => setTimeout(resolve, ms))
// A task row's `progress` from a task event (every event carries the task's progress as of it).
const progressOf = (ev) => ({ percent: ev.percent || 0, stage: ev.stage, message: ev.message, metrics: ev.metrics })
// A 404 or 403: what was asked for is not there (or not for this user), not a passing failure.
const gone = (e) => e.status === 404 || e.status === 403
const finite = (v) => typeof v === 'number' && Number.isFinite(v)
const NON_FINITE = ['NaN', 'Infinity', '-Infinity'] // JSON has none: the server sends them as these strings
const NEW_RUN = ['task.started', 'task.retrying', 'task.requeued'] // the chart's line breaks there

// A metric's latest value as the legend shows it: a number, or NaN / an infinity as text; null for
// anything else (a list, a label), which is neither charted nor listed.
function metricText(v) {
  if (finite(v)) return Number.isInteger(v) ? String(v) : v.toFixed(4)
  if (typeof v === 'number') return String(v)
  return NON_FINITE.includes(v) ? v : null
}

// An event's time of day in the browser's time zone (the server sends UTC), to the millisecond.
function clock(iso) {
  const t = new Date(iso)
  if (Number.isNaN(t.getTime())) return ''
  const pad = (n, width = 2) => String(n).padStart(width, '0')
  return `${pad(t.getHours())}:${pad(t.getMinutes())}:${pad(t.getSeconds())}.${pad(t.getMilliseconds(), 3)}`
}

// What a refused login says: a wrong password only for a 400/401, else that the server is in trouble.
function loginError(status) {
  if (status === 400 || status === 401) return 'Wrong username or password.'
  if (status === 429) return 'Too many attempts: wait a moment.'
  return `Server unavailable (HTTP ${status}), try again`
}

// A random UUID (crypto.randomUUID exists only on https and localhost).
function newKey() {
  const b = crypto.getRandomValues(new Uint8Array(16))
  b[6] = (b[6] & 0x0f) | 0x40; b[8] = (b[8] & 0x3f) | 0x80
  const h = [...b].map((x) => x.toString(16).padStart(2, '0')).join('')
  return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`
}

function emptyDrawer() {
  return { task: null, socket: null, lastSeq: 0, taskSeq: 0, log: [], chart: '', legend: [], points: 0,
    from: 0, connection: 'live', attempts: 0 }
}

Alpine.data('dashboard', () => {
  // Not reactive: buffers between the sockets and the next frame, the id → row index, the refresh in flight.
  let inbox = [] // dashboard socket messages not applied yet
  let drawerInbox = []
  let scheduled = false
  let index = new Map() // task id → its row (the reactive proxy in `tasks`)
  let added = [] // rows made from events in this frame, not in `tasks` yet
  let resort = false // a row learnt its created_at: sort again
  const unfilled = new Set() // rows made from events: their owner, priority… come from one batched GET
  let fillTimer = null
  let refreshing = null
  // The drawer's metrics: points ({metrics, gap}: gap, the first of a new run), the latest value of each,
  // the last report skipped by the stride (drawn at the end), a new run begun since the last point.
  const emptyChart = () => ({ points: [], stride: 1, seen: 0, last: {}, tail: null, gap: false })
  let chart = emptyChart()

  return {
  STATES,
  user: null,
  tokens: null,
  loginForm: { username: '', password: '' },
  loginError: '',
  connection: 'offline', // live | connecting | reconnecting | offline
  socket: null,
  attempts: 0,
  tasks: [],
  shown: PAGE,
  busy: {}, // task id → an action on it is in flight
  submitting: false,
  queues: [],
  queuesStale: false, // the last load failed: the cards show the previous answer
  spark: {},
  stats: null,
  statsStale: false,
  algorithms: [],
  filters: { label: '', status: '', queue: '', algorithm: '' },
  more: false, // the last reload's list had a next page: the server holds more matching tasks than loaded
  bulkBusy: false, // a bulk cancel or retry is in flight
  bulkResult: '', // its answer ("cancelled 3, cancelling 1, …") or its error, beside the buttons
  bulkError: false,
  form: { algorithm: '', params: '{}', priority: '', queue: '' },
  submitError: '',
  dragId: null,
  dropTarget: null,
  moved: '', // "… moved to the front of default": a reorder's result, shown for a few seconds
  drawer: emptyDrawer(),
  timers: [],

  // --- session --------------------------------------------------------------------------------
  start() {
    try { this.tokens = JSON.parse(localStorage.getItem(TOKENS)) } catch { this.tokens = null }
    if (this.tokens?.access) this.enter()
  },

  async login() {
    this.loginError = ''
    let r
    try {
      r = await fetch('/api/v1/auth/token/', {
        method: 'POST', headers: { 'Content-Type': 'application/json' },
        body: JSON.stringify(this.loginForm),
      })
    } catch { this.loginError = 'Cannot reach the server, try again'; return }
    if (!r.ok) { this.loginError = loginError(r.status); return }
    this.tokens = { ...(await r.json()), username: this.loginForm.username }
    localStorage.setItem(TOKENS, JSON.stringify(this.tokens))
    this.loginForm.password = ''
    this.enter()
  },

  enter() {
    this.user = { username: this.tokens.username, operator: false }
    this.connect()
    this.loadAlgorithms()
    this.timers.push(setInterval(() => { this.loadQueues(); this.loadStats() }, 5000))
  },

  logout() {
    localStorage.removeItem(TOKENS)
    this.timers.forEach(clearInterval)
    this.timers = []
    this.closeDrawer()
    if (this.socket) { this.socket.onclose = null; this.socket.close() }
    inbox = []; added = []; index = new Map(); unfilled.clear()
    Object.assign(this, { user: null, tokens: null, tasks: [], queues: [], connection: 'offline',
      queuesStale: false, statsStale: false })
  },

  // One refresh at a time, shared by every caller that met a 401. True: new tokens. False: the refresh
  // token was refused (401), and the user is logged out. A busy or unreachable server (429, 5xx, no
  // network) is asked again after its Retry-After (or a backoff): the session is kept meanwhile.
  refresh() {
    refreshing ||= this.refreshOnce().finally(() => { refreshing = null })
    return refreshing
  },

  async refreshOnce() {
    for (let attempt = 0; this.user; attempt++) {
      if (!this.tokens?.refresh) { this.logout(); return false }
      let r = null
      try {
        r = await fetch('/api/v1/auth/token/refresh/', {
          method: 'POST', headers: { 'Content-Type': 'application/json' },
          body: JSON.stringify({ refresh: this.tokens.refresh }),
        })
      } catch { /* the network: try again */ }
      if (r?.ok) {
        Object.assign(this.tokens, await r.json())
        localStorage.setItem(TOKENS, JSON.stringify(this.tokens))
        return true
      }
      if (r?.status === 401) { this.logout(); return false }
      const after = Number(r?.headers.get('Retry-After')) * 1000
      await sleep(Math.min(60000, after > 0 ? after : backoff(attempt)))
    }
    return false
  },

  async api(path, { method = 'GET', body, headers = {}, retried = false } = {}) {
    if (!this.tokens) throw new Error('logged out')
    const token = this.tokens.access
    const h = { ...headers, Authorization: `Bearer ${token}` }
    if (body !== undefined) h['Content-Type'] = 'application/json'
    const r = await fetch(path, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) })
    if (r.status === 401 && !retried) {
      // another call may have refreshed the token already; otherwise join (or start) the one refresh
      if ((this.tokens && this.tokens.access !== token) || await this.refresh()) {
        return this.api(path, { method, body, headers, retried: true })
      }
      throw new Error('session expired')
    }
    const data = r.status === 204 ? null : await r.json().catch(() => null)
    if (!r.ok) {
      const error = new Error(data?.error?.message || `HTTP ${r.status}`)
      error.status = r.status
      error.retryAfter = Number(r.headers.get('Retry-After')) || null
      throw error
    }
    return data
  },

  // --- the dashboard socket -------------------------------------------------------------------
  connect() {
    this.connection = this.attempts ? 'reconnecting' : 'connecting'
    const ws = new WebSocket(wsUrl('/ws/dashboard/'))
    this.socket = ws
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: this.tokens.access }))
    ws.onmessage = (m) => { inbox.push(JSON.parse(m.data)); this.schedule() }
    ws.onclose = async (e) => {
      if (this.socket !== ws || !this.user) return
      this.connection = 'reconnecting'
      if (e.code === 4401 && !(await this.refresh())) return
      setTimeout(() => this.user && this.connect(), backoff(this.attempts++))
    }
  },

  connectionText() {
    return { live: '● live', connecting: 'connecting…', reconnecting: 'reconnecting…', offline: 'offline' }[this.connection]
  },

  // Messages are applied in batches, at most once per animation frame (and every 250 ms in a hidden
  // tab, which gets no frames), so a burst of events costs one redraw, not one per event.
  schedule() {
    if (scheduled) return
    scheduled = true
    requestAnimationFrame(() => this.flush())
    setTimeout(() => this.flush(), 250)
  },

  flush() {
    if (!scheduled) return
    scheduled = false
    const batch = inbox, drawerBatch = drawerInbox
    inbox = []; drawerInbox = []
    for (const ev of batch) this.onEvent(ev)
    this.addRows()
    if (drawerBatch.length) this.applyDrawer(drawerBatch)
  },

  onEvent(ev) {
    if (ev.event === 'dashboard.snapshot') {
      this.user = ev.user
      this.connection = 'live'
      this.attempts = 0
      // The resync point after a reconnect: the snapshot's tasks (each with its last_seq), then the
      // REST list of the filters; both merged by seq, so neither undoes a newer live event. The events
      // sent while the socket was down are not replayed, and the snapshot and the list hold only the
      // newest tasks (and those of the filters): every other row that was not final is read again,
      // 100 ids a call, whatever the filters (a row that left them leaves the table).
      const stale = [...index.values()].filter((t) => !FINAL.includes(t.status)).map((t) => t.id)
      for (const task of ev.tasks || []) this.put(task)
      for (const id of stale) this.fillSoon(id)
      this.schedule()
      this.reload()
      this.loadQueues()
      this.loadStats()
      return
    }
    if (ev.event === 'queue.paused' || ev.event === 'queue.resumed') {
      const q = this.queues.find((x) => x.name === ev.queue)
      if (q) q.paused = ev.paused
      else this.loadQueues()
      return
    }
    if (ev.event?.startsWith('task.')) this.applyTaskEvent(ev)
  },

  applyTaskEvent(ev) {
    const t = index.get(ev.task_id)
    if (!t) {
      // A task this page has not seen (submitted elsewhere, or entering the filtered state): its row
      // is made from the event at once; owner, priority, created_at follow in one batched GET. Until
      // then a row from an event other than task.created sorts last (it is an older task).
      if (!this.matches(ev, false)) return // an event has no labels: the batched GET brings them
      this.newRow({ id: ev.task_id, algorithm: ev.algorithm, queue: ev.queue, status: ev.status,
        priority: ev.data?.priority ?? null,
        progress: progressOf(ev),
        _seq: ev.seq, _t: ev.event === 'task.created' ? Date.parse(ev.timestamp) || Date.now() : 0 })
      this.fillSoon(ev.task_id)
      return
    }
    if ((t._seq || 0) >= ev.seq) return // stale or duplicate
    t._seq = ev.seq
    t.status = ev.status
    t.progress = progressOf(ev)
    if (ev.event === 'task.priority_changed') t.priority = ev.data?.priority ?? t.priority
    if (ev.event !== 'task.progress') this.queuesSoon()
    if (FINAL.includes(ev.status) && ev.status !== 'SUCCEEDED') this.fillSoon(ev.task_id) // its error
  },

  // `strict`: a row whose labels are not known yet (made from an event) fails a label filter; not
  // strict, it passes (a new task's event may be of the label: its row is made, and shown once filled).
  matches(t, strict = true) {
    const f = this.filters
    return (!f.status || f.status === t.status) && (!f.queue || f.queue === t.queue)
      && (!f.algorithm || f.algorithm === t.algorithm)
      && (!f.label || (t.labels ? t.labels.includes(f.label) : !strict))
  },

  // A copy of a task from the REST API or a snapshot; `last_seq` is the last event it reflects. A copy
  // at least as new as the row replaces its fields; an older one only fills the fields the row lacks.
  put(copy) {
    const seq = copy.last_seq ?? 0
    const t = index.get(copy.id)
    if (!t) {
      this.newRow({ ...copy, _seq: seq, _t: Date.parse(copy.created_at) || Date.now() })
      return
    }
    if (seq >= (t._seq || 0)) Object.assign(t, copy, { _seq: seq })
    else for (const [k, v] of Object.entries(copy)) if (t[k] == null) t[k] = v
    const created = Date.parse(copy.created_at)
    if (created && !t._t) { t._t = created; resort = true; this.schedule() } // it sorted last until now
  },

  newRow(row) {
    index.set(row.id, row)
    added.push(row)
    this.schedule()
  },

  // The rows made since the last frame join the table: newest first, at most MAX_TASKS (the oldest
  // rows outside the filters go first).
  addRows() {
    if (!added.length && !resort) return
    const rows = [...this.tasks, ...added].sort((a, b) => b._t - a._t)
    added = []
    resort = false
    let extra = rows.length - MAX_TASKS
    for (let i = rows.length - 1; i >= 0 && extra > 0; i--) if (!this.matches(rows[i])) { rows.splice(i, 1); extra-- }
    if (extra > 0) rows.length = MAX_TASKS
    this.tasks = rows
    index = new Map(this.tasks.map((t) => [t.id, t]))
  },

  fillSoon(id) {
    unfilled.add(id)
    fillTimer ||= setTimeout(() => this.fill(), 300)
  },

  async fill() {
    const ids = [...unfilled].filter((id) => index.has(id)).slice(0, 100) // not the rows dropped since
    if (ids.length < 100) unfilled.clear()
    else ids.forEach((id) => unfilled.delete(id))
    if (!ids.length) { fillTimer = null; return }
    try {
      const page = await this.api(`/api/v1/tasks/?id=${ids.join(',')}&page_size=100`)
      for (const task of page.results || page) if (index.has(task.id)) this.put(task)
      this.schedule()
    } catch { /* gone or not ours; the row stays as the events made it */ }
    fillTimer = unfilled.size ? setTimeout(() => this.fill(), 100) : null
  },

  // --- REST loads -----------------------------------------------------------------------------
  async reload() {
    const q = new URLSearchParams({ page_size: '200' })
    for (const [k, v] of Object.entries(this.filters)) if (v) q.set(k, v)
    try {
      const page = await this.api(`/api/v1/tasks/?${q}`)
      for (const task of page.results || page) this.put(task)
      this.more = !!page.next
      this.schedule()
    } catch { /* shown by the connection state */ }
  },

  // On an error the last cards stay, marked stale (the server is down or busy); a 404 or 403 (a server
  // without the queueing API, or not for this user) removes them.
  async loadQueues() {
    try {
      const data = await this.api('/api/v1/queues/')
      this.queues = data.results || data
      this.queuesStale = false
      for (const q of this.queues) {
        const s = (this.spark[q.name] ||= [])
        s.push(q.throughput_per_minute || 0)
        if (s.length > 60) s.shift()
      }
    } catch (e) {
      if (gone(e)) { this.queues = []; this.queuesStale = false } else this.queuesStale = true
    }
  },

  queuesSoon() {
    clearTimeout(this._queuesTimer)
    this._queuesTimer = setTimeout(() => this.loadQueues(), 500)
  },

  async loadStats() {
    try {
      this.stats = await this.api('/api/v1/statistics/tasks/?window=1h')
      this.statsStale = false
    } catch (e) {
      if (gone(e)) { this.stats = null; this.statsStale = false } else this.statsStale = true
    }
  },

  async loadAlgorithms() {
    try {
      this.algorithms = await this.api('/api/v1/algorithms/')
      if (!this.form.algorithm && this.algorithms.length) {
        this.form.algorithm = (this.algorithms.find((a) => a.name === 'demo.hello') || this.algorithms[0]).name
        this.pickAlgorithm()
      }
    } catch { this.algorithms = [] }
  },

  pickAlgorithm() {
    const a = this.algorithms.find((x) => x.name === this.form.algorithm)
    this.form.params = JSON.stringify(a?.examples?.[0] || {})
  },

  // --- actions --------------------------------------------------------------------------------
  // Submit is disabled while its request is in flight, and each click sends its own Idempotency-Key:
  // a double click (or a resent request) makes one task.
  async submit() {
    if (this.submitting) return
    this.submitError = ''
    let params
    try { params = JSON.parse(this.form.params || '{}') } catch { this.submitError = 'params: not JSON'; return }
    const body = { algorithm: this.form.algorithm, params }
    if (this.form.priority) body.priority = this.form.priority
    if (this.form.queue) body.queue = this.form.queue
    this.submitting = true
    try {
      this.put(await this.api('/api/v1/tasks/', { method: 'POST', body, headers: { 'Idempotency-Key': newKey() } }))
    } catch (e) { this.submitError = e.message } finally { this.submitting = false }
  },

  // An action on a row: one at a time per task (its buttons are disabled meanwhile).
  async act(t, path, body, method = 'POST') {
    if (this.busy[t.id]) return null
    this.busy[t.id] = true
    try {
      return await this.api(`/api/v1/tasks/${t.id}/${path}/`, { method, body, headers: { 'Idempotency-Key': newKey() } })
    } catch (e) { alert(e.message); return null } finally { delete this.busy[t.id] }
  },

  // A running task answers RUNNING with cancel_requested: the row says "cancelling…" until the worker
  // stops it; a waiting one answers CANCELLED.
  async cancel(t) {
    const task = await this.act(t, 'cancel')
    if (task) this.put(task)
  },

  async retry(t) {
    const task = await this.act(t, 'retry')
    if (task) this.put(task)
  },

  // The box's text: a whole number is sent (the server checks the range); anything else is refused here.
  // Whatever is refused, the box shows the task's priority again.
  async setPriority(t, input) {
    const text = input.value.trim()
    let task = null
    if (/^\d+$/.test(text)) task = await this.act(t, 'priority', { priority: Number(text) }, 'PATCH')
    else alert('Priority: a whole number from 0 to 9.')
    if (task) this.put(task)
    input.value = t.priority ?? ''
  },

  async moveToFront(t) {
    try {
      await this.api(`/api/v1/queues/${t.queue}/reorder/`, { method: 'POST', body: { task_ids: [t.id] } })
      this.showMoved(`${t.id.slice(0, 8)} moved to the front of ${t.queue}`)
    } catch (e) { alert(e.message) }
  },

  // --- bulk actions on the filters ----------------------------------------------------------
  // "Cancel all matching" and "Retry failed matching" send the table's filters to the bulk endpoints,
  // which act on every matching task on the server (not only the rows loaded here): the confirm says so.
  bulkFilters() {
    const f = this.filters
    return Object.fromEntries(['label', 'status', 'queue', 'algorithm'].filter((k) => f[k]).map((k) => [k, f[k]]))
  },
  hasFilters() { return Object.keys(this.bulkFilters()).length > 0 },
  canBulkCancel() { return this.hasFilters() && !FINAL.includes(this.filters.status) },
  // The failed states the retry names: those of the state filter, else both.
  retryStatuses() { return this.filters.status ? FAILED.filter((s) => s === this.filters.status) : FAILED },
  canBulkRetry() { return this.hasFilters() && this.retryStatuses().length > 0 },
  filtersText() { return Object.entries(this.bulkFilters()).map(([k, v]) => `${k} ${v}`).join(', ') },

  async bulkCancel() {
    const rows = this.visibleTasks()
    const active = rows.filter((t) => !this.isFinal(t)).length
    const ask = `Cancel every task matching ${this.filtersText()}?\n` +
      `This page shows ${rows.length} matching (${active} not finished)${this.moreText()}.`
    const r = await this.bulk('cancel', this.bulkFilters(), ask)
    if (r) this.showBulk(`cancelled ${r.cancelled}, cancelling ${r.cancelling}, already final ${r.already_final}`)
  },

  async bulkRetry() {
    const statuses = this.retryStatuses()
    const failed = this.visibleTasks().filter((t) => statuses.includes(t.status)).length
    const ask = `Retry every ${statuses.join(' or ')} task matching ${this.filtersText()}?\n` +
      `This page shows ${failed} of them${this.moreText()}.`
    const r = await this.bulk('retry', { ...this.bulkFilters(), status: statuses }, ask)
    if (r) this.showBulk(`retried ${r.retried} (new tasks), already retried ${r.already_retried}`)
  },

  moreText() { return this.more ? '; the server may hold more, not loaded here, and acts on them too' : '' },

  // One bulk call at a time (its buttons are disabled meanwhile); its answer or error is shown inline.
  async bulk(path, filters, question) {
    if (this.bulkBusy || !confirm(question)) return null
    this.bulkBusy = true
    this.bulkResult = ''
    try {
      const r = await this.api(`/api/v1/tasks/${path}/`, { method: 'POST', body: { filters },
        headers: { 'Idempotency-Key': newKey() } })
      this.reload()
      return r
    } catch (e) {
      this.bulkError = true
      this.bulkResult = e.status === 429
        ? `Too many requests: try again${e.retryAfter ? ` in ${e.retryAfter} s` : ' later'}.`
        : `${path} refused: ${e.message}`
      return null
    } finally { this.bulkBusy = false }
  },

  showBulk(text) {
    this.bulkError = false
    this.bulkResult = text
  },

  // The count says what it counts: the rows loaded here, not every task on the server (the list gives no
  // total); "more on the server" when the last list had a next page.
  countText() {
    const n = this.visibleTasks().length, all = this.tasks.length
    if (!this.hasFilters()) return this.more ? `${all} tasks loaded (the newest; more on the server)` : `${all} tasks`
    return `showing ${n} of the ${all} loaded` + (this.more ? ' (more matching on the server)' : '')
  },

  // The table is sorted by creation time, so a reorder shows no change there: a line says where it went.
  showMoved(text) {
    this.moved = text
    setTimeout(() => { if (this.moved === text) this.moved = '' }, 5000)
  },

  // Operators drag a waiting row onto another waiting row of the same queue: it takes that row's place.
  canReorder(t) { return this.user?.operator && t.status === 'PENDING' },
  canDrop(t) {
    const dragged = index.get(this.dragId)
    return dragged && dragged.id !== t.id && this.canReorder(t) && dragged.queue === t.queue
  },

  async dropOn(t) {
    const dragged = this.dragId
    this.dragId = this.dropTarget = null
    if (!dragged || dragged === t.id) return
    try {
      const waiting = await this.api(`/api/v1/queues/${t.queue}/tasks/?limit=1000`)
      // the target's own start position (the list begins with the QUEUED tasks, position 0: not movable)
      const position = waiting.tasks.find((x) => x.id === t.id)?.waiting?.position ?? 0
      if (position < 1) return
      await this.api(`/api/v1/queues/${t.queue}/reorder/`, { method: 'POST', body: { task_id: dragged, position } })
      this.showMoved(`${dragged.slice(0, 8)} moved to position ${position} in ${t.queue}`)
    } catch (e) { alert(e.message) }
  },

  async queueAction(name, action) {
    try {
      const q = await this.api(`/api/v1/queues/${name}/${action}/`, { method: 'POST' })
      const card = this.queues.find((x) => x.name === name)
      if (card && q && 'paused' in q) card.paused = q.paused
      else this.loadQueues()
    } catch (e) { alert(e.message) }
  },

  // --- the drawer: one task's socket, from the tail of its history -----------------------------
  // It reads the task's last seq and replays only the last DRAWER_TAIL events (the log and the
  // metrics of a long run are cut at the front); reconnects go on from the last seq it saw.
  async openDrawer(id) {
    this.closeDrawer()
    const d = this.drawer
    const row = index.get(id)
    d.task = row ? { ...row } : null
    d.connection = 'connecting'
    this.focusDrawer()
    let last = row?._seq || 0
    try {
      const task = await this.api(`/api/v1/tasks/${id}/`)
      last = task.last_seq ?? last
      if (this.drawer !== d) return // closed or another one opened meanwhile
      d.task = task
      if (!row) this.focusDrawer()
    } catch (e) {
      if (this.drawer !== d) return
      if (e.status === 404) { d.task ||= { id, status: '?', progress: { percent: 0 } }; d.connection = 'no longer visible'; return }
    }
    d.lastSeq = d.from = Math.max(0, last - DRAWER_TAIL)
    this.drawerConnect(id)
  },

  drawerConnect(id) {
    const d = this.drawer
    const ws = new WebSocket(wsUrl(`/ws/tasks/${id}/?after_seq=${d.lastSeq}`))
    d.socket = ws
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: this.tokens.access }))
    ws.onmessage = (m) => { drawerInbox.push(JSON.parse(m.data)); this.schedule() }
    ws.onclose = async (e) => {
      if (this.drawer.socket !== ws) return
      // 4403: the task is gone or no longer ours; 4400: a request the server will never accept.
      if (e.code === 4403) { d.connection = 'no longer visible'; return }
      if (e.code === 4400) { d.connection = 'closed by the server'; return }
      d.connection = 'reconnecting…'
      if (e.code === 4401 && !(await this.refresh())) return
      setTimeout(() => this.drawer.socket === ws && this.drawerConnect(id), backoff(d.attempts++))
    }
  },

  applyDrawer(batch) {
    const d = this.drawer
    const lines = []
    let charted = false
    for (const ev of batch) {
      if (ev.event === 'task.snapshot') {
        d.task = { ...ev.task }
        d.taskSeq = ev.seq
        d.connection = 'live'
        d.attempts = 0
        continue
      }
      if (!ev.event?.startsWith('task.') || ev.seq <= d.lastSeq) continue
      d.lastSeq = ev.seq
      const time = clock(ev.timestamp)
      if (ev.event === 'task.log') {
        lines.push({ seq: ev.seq, time, text: ev.data?.line ?? '' })
      } else {
        if (ev.event === 'task.progress' && ev.metrics && Object.keys(ev.metrics).length) {
          charted = this.addPoint(ev.metrics) || charted
        }
        if (NEW_RUN.includes(ev.event)) this.breakChart()
        if (ev.event !== 'task.progress') lines.push({ seq: ev.seq, time, text: `— ${ev.event.slice(5)} —` })
      }
      // The snapshot is the task as of its seq: replayed events up to it are history, later ones
      // (gap fills, marked replay too) are news, like live ones.
      if (d.task && ev.seq > d.taskSeq) {
        d.taskSeq = ev.seq
        d.task.status = ev.status
        if (ev.event !== 'task.log') d.task.progress = progressOf(ev)
      }
    }
    if (lines.length) d.log = [...d.log, ...lines].slice(-LOG_KEEP)
    if (charted) this.drawChart()
  },

  // Every point until MAX_POINTS, then every other one of those and every 2nd new one, and so on:
  // evenly spaced over the whole run. The legend shows each metric's latest value.
  // The first point of a new run is always kept, and so is its mark when the points are halved.
  addPoint(metrics) {
    Object.assign(chart.last, metrics)
    if (chart.seen++ % chart.stride && !chart.gap) { chart.tail = metrics; return true }
    chart.points.push({ metrics, gap: chart.gap })
    chart.tail = null
    chart.gap = false
    if (chart.points.length >= MAX_POINTS) {
      let gap = false
      chart.points = chart.points.filter((p, i) => {
        gap ||= p.gap
        if (i % 2) return false
        p.gap = gap
        gap = false
        return true
      })
      chart.stride *= 2
    }
    return true
  },

  // A new attempt (or a run handed back and started again) begins a new line: its curve starts over.
  breakChart() {
    if (chart.tail) chart.points.push({ metrics: chart.tail, gap: false }) // the end of the run before
    chart.tail = null
    chart.gap = chart.points.length > 0
  },

  // One x axis for every metric (a point per report); a line for each run of finite values: a new run, or
  // NaN / an infinity (shown in the legend, not charted), breaks it.
  drawChart() {
    const names = Object.keys(chart.last).filter((k) => metricText(chart.last[k]) !== null)
    const series = chart.tail ? [...chart.points, { metrics: chart.tail, gap: false }] : chart.points
    const step = series.length > 1 ? 300 / (series.length - 1) : 0
    const lines = names.flatMap((name, i) => {
      const values = series.map((p) => p.metrics[name]).filter(finite)
      let lo = Infinity, hi = -Infinity
      for (const v of values) { lo = Math.min(lo, v); hi = Math.max(hi, v) }
      const span = hi - lo || 1
      const segments = [[]]
      series.forEach((p, j) => {
        const v = p.metrics[name]
        if ((p.gap || (v !== undefined && !finite(v))) && segments.at(-1).length) segments.push([])
        if (finite(v)) segments.at(-1).push(`${(j * step).toFixed(1)},${(95 - 90 * (v - lo) / span).toFixed(1)}`)
      })
      return segments.filter((s) => s.length)
        .map((s) => `<polyline class="m${i % 8}" points="${s.join(' ')}"></polyline>`)
    })
    const d = this.drawer
    d.chart = `<svg viewBox="0 0 300 100" preserveAspectRatio="none">${lines.join('')}</svg>`
    d.legend = names.map((name) => ({ name, value: metricText(chart.last[name]) }))
    d.points = chart.points.length
  },

  closeDrawer() {
    const ws = this.drawer.socket
    this.drawer = emptyDrawer()
    drawerInbox = []
    chart = emptyChart()
    if (ws) ws.close()
  },

  // The drawer opened from a row (a click, or Enter / Space on the focused row) takes the focus; closed by
  // its button or Escape, it gives the focus back to the row.
  focusDrawer() {
    this.$nextTick(() => document.querySelector('[data-testid=drawer] header button')?.focus())
  },

  dismissDrawer() {
    const id = this.drawer.task?.id
    this.closeDrawer()
    if (id) document.querySelector(`tr[data-task="${id}"]`)?.focus()
  },

  // --- view helpers ---------------------------------------------------------------------------
  visibleTasks() { return this.tasks.filter((t) => this.matches(t)) },
  // Only the first `shown` matching rows are rendered: the table's cost stays that of a page.
  shownTasks() { return this.visibleTasks().slice(0, this.shown) },
  filtersChanged() { this.shown = PAGE; this.bulkResult = ''; this.more = false; this.reload() },
  isActive(t) { return ACTIVE.includes(t.status) && !t.cancel_requested },
  isFinal(t) { return FINAL.includes(t.status) },
  canChangePriority(t) { return t.status === "PENDING" || t.status === "QUEUED" },

  fmtSeconds(s) {
    if (s == null) return '–'
    if (s < 1) return `${(s * 1000).toFixed(0)} ms`
    if (s < 120) return `${s.toFixed(1)} s`
    if (s < 7200) return `${(s / 60).toFixed(1)} min`
    return `${(s / 3600).toFixed(1)} h`
  },

  sparkline(name) {
    const s = this.spark[name] || []
    if (s.length < 2) return ''
    const hi = Math.max(...s) || 1
    return s.map((v, i) => `${(i * 100 / (s.length - 1)).toFixed(1)},${(22 - 20 * v / hi).toFixed(1)}`).join(' ')
  },

  throughputSvg() {
    const rects = this.throughputBars().map((b) => `<rect x="${b.x}" y="${b.y}" width="${b.w}" height="${b.h}"></rect>`)
    return `<svg class="bars" viewBox="0 0 600 60" preserveAspectRatio="none">${rects.join('')}</svg>`
  },

  // Wait (submit → start) per minute over the window: p50 and p95 of the tasks that finished in it.
  waitSvg() {
    const rows = (this.stats?.throughput || []).filter((r) => r.wait_p95_seconds != null)
    if (!rows.length) return ''
    const since = new Date(this.stats.since).getTime()
    const span = (this.stats.window_seconds || 3600) * 1000
    const hi = Math.max(...rows.map((r) => r.wait_p95_seconds)) || 1
    const w = 600 * 60000 / span // one minute wide: a step per minute, visible even for a single minute
    const line = (key) => rows.map((r) => {
      const x = 600 * (new Date(r.minute).getTime() - since) / span
      const y = (58 - 56 * r[key] / hi).toFixed(1)
      return `${x.toFixed(1)},${y} ${Math.min(600, x + w).toFixed(1)},${y}`
    }).join(' ')
    return `<svg class="wait" viewBox="0 0 600 60" preserveAspectRatio="none" data-testid="wait-chart">` +
      `<polyline class="m0" points="${line('wait_p50_seconds')}"></polyline>` +
      `<polyline class="m1" points="${line('wait_p95_seconds')}"></polyline></svg>` +
      `<small>p50 (solid) and p95 (dashed) per minute; top = ${this.fmtSeconds(hi)}</small>`
  },

  throughputBars() {
    const rows = this.stats?.throughput || []
    if (!rows.length) return []
    const since = new Date(this.stats.since).getTime()
    const span = (this.stats.window_seconds || 3600) * 1000
    const hi = Math.max(...rows.map((r) => r.finished)) || 1
    const w = Math.max(2, 600 / (span / 60000) - 1)
    return rows.map((r) => {
      const h = 58 * r.finished / hi
      return { x: (600 * (new Date(r.minute).getTime() - since) / span).toFixed(1), y: (60 - h).toFixed(1), w: w.toFixed(1), h: h.toFixed(1) }
    })
  },
}
})

window.Alpine = Alpine
Alpine.start()
