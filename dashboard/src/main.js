// Conveyor dashboard: one Alpine component. REST for reads and actions, two WebSockets for live
// state: /ws/dashboard/ (every visible task; operators also get queue events) and /ws/tasks/<id>/
// for the open drawer (log lines and metrics, replayed from after_seq on every reconnect).
import Alpine from 'alpinejs'
import './style.css'

const TOKENS = 'conveyor.tokens'
const FINAL = ['SUCCEEDED', 'FAILED', 'CANCELLED', 'TIMED_OUT']
const ACTIVE = ['PENDING', 'QUEUED', 'RUNNING']
const STATES = ['PENDING', 'QUEUED', 'RUNNING', ...FINAL]
const MAX_TASKS = 500
const MAX_LOG = 2000

function wsUrl(path) {
  const proto = location.protocol === 'https:' ? 'wss:' : 'ws:'
  return `${proto}//${location.host}${path}`
}

function backoff(attempt) {
  return Math.min(5000, 250 * 2 ** Math.min(attempt, 5)) * (0.75 + Math.random() / 2)
}

Alpine.data('dashboard', () => ({
  STATES,
  user: null,
  tokens: null,
  loginForm: { username: '', password: '' },
  loginError: '',
  connection: 'offline', // live | connecting | reconnecting | offline
  socket: null,
  attempts: 0,
  tasks: [],
  queues: [],
  spark: {},
  stats: null,
  algorithms: [],
  filters: { status: '', queue: '', algorithm: '' },
  form: { algorithm: '', params: '{}', priority: '', queue: '' },
  submitError: '',
  dragId: null,
  dropTarget: null,
  reorderedAt: 0,
  drawer: { task: null, socket: null, lastSeq: 0, log: [], points: [], connection: 'live', attempts: 0 },
  timers: [],

  // --- session --------------------------------------------------------------------------------
  start() {
    try { this.tokens = JSON.parse(localStorage.getItem(TOKENS)) } catch { this.tokens = null }
    if (this.tokens?.access) this.enter()
  },

  async login() {
    this.loginError = ''
    const r = await fetch('/api/v1/auth/token/', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify(this.loginForm),
    })
    if (!r.ok) { this.loginError = 'Wrong username or password.'; return }
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
    Object.assign(this, { user: null, tokens: null, tasks: [], queues: [], connection: 'offline' })
  },

  async refresh() {
    if (!this.tokens?.refresh) return false
    const r = await fetch('/api/v1/auth/token/refresh/', {
      method: 'POST', headers: { 'Content-Type': 'application/json' },
      body: JSON.stringify({ refresh: this.tokens.refresh }),
    })
    if (!r.ok) return false
    Object.assign(this.tokens, await r.json())
    localStorage.setItem(TOKENS, JSON.stringify(this.tokens))
    return true
  },

  async api(path, { method = 'GET', body, retried = false } = {}) {
    const headers = { Authorization: `Bearer ${this.tokens.access}` }
    if (body !== undefined) headers['Content-Type'] = 'application/json'
    const r = await fetch(path, { method, headers, body: body === undefined ? undefined : JSON.stringify(body) })
    if (r.status === 401 && !retried) {
      if (await this.refresh()) return this.api(path, { method, body, retried: true })
      this.logout()
      throw new Error('session expired')
    }
    const data = r.status === 204 ? null : await r.json().catch(() => null)
    if (!r.ok) {
      const error = new Error(data?.error?.message || `HTTP ${r.status}`)
      error.status = r.status
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
    ws.onmessage = (m) => this.onEvent(JSON.parse(m.data))
    ws.onclose = async (e) => {
      if (this.socket !== ws || !this.user) return
      this.connection = 'reconnecting'
      if (e.code === 4401 && !(await this.refresh())) { this.logout(); return }
      setTimeout(() => this.user && this.connect(), backoff(this.attempts++))
    }
  },

  connectionText() {
    return { live: '● live', connecting: 'connecting…', reconnecting: 'reconnecting…', offline: 'offline' }[this.connection]
  },

  onEvent(ev) {
    if (ev.event === 'dashboard.snapshot') {
      this.user = ev.user
      this.connection = 'live'
      this.attempts = 0
      // The snapshot is the resync point after a reconnect: reload everything once.
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
    const t = this.tasks.find((x) => x.id === ev.task_id)
    if (!t) {
      if (ev.event === 'task.created' && this.matches(ev)) this.fetchTask(ev.task_id)
      return
    }
    if ((t._seq || 0) >= ev.seq) return // stale or duplicate
    t._seq = ev.seq
    t.status = ev.status
    t.progress = { percent: ev.percent, stage: ev.stage, message: ev.message, metrics: ev.metrics }
    if (ev.event === 'task.priority_changed') t.priority = ev.data?.priority ?? t.priority
    if (ev.event !== 'task.progress') this.queuesSoon()
    if (FINAL.includes(ev.status) && ev.status !== 'SUCCEEDED') this.fetchTask(ev.task_id)
  },

  matches(ev) {
    const f = this.filters
    return (!f.status || f.status === ev.status) && (!f.queue || f.queue === ev.queue)
      && (!f.algorithm || f.algorithm === ev.algorithm)
  },

  async fetchTask(id) {
    try {
      const task = await this.api(`/api/v1/tasks/${id}/`)
      task._seq = task._seq || 0
      const i = this.tasks.findIndex((x) => x.id === id)
      if (i >= 0) this.tasks[i] = { ...this.tasks[i], ...task, _seq: this.tasks[i]._seq }
      else this.tasks.unshift(task)
      if (this.tasks.length > MAX_TASKS) this.tasks.length = MAX_TASKS
      this.queuesSoon()
    } catch { /* gone or not ours */ }
  },

  // --- REST loads -----------------------------------------------------------------------------
  async reload() {
    const q = new URLSearchParams({ page_size: '200' })
    for (const [k, v] of Object.entries(this.filters)) if (v) q.set(k, v)
    try {
      const page = await this.api(`/api/v1/tasks/?${q}`)
      this.tasks = (page.results || page).map((t) => ({ ...t, _seq: 0 }))
    } catch { /* shown by the connection state */ }
  },

  async loadQueues() {
    try {
      const data = await this.api('/api/v1/queues/')
      this.queues = data.results || data
      for (const q of this.queues) {
        const s = (this.spark[q.name] ||= [])
        s.push(q.throughput_per_minute || 0)
        if (s.length > 60) s.shift()
      }
    } catch { this.queues = [] } // a server without the queueing API
  },

  queuesSoon() {
    clearTimeout(this._queuesTimer)
    this._queuesTimer = setTimeout(() => this.loadQueues(), 500)
  },

  async loadStats() {
    try { this.stats = await this.api('/api/v1/statistics/tasks/?window=1h') } catch { this.stats = null }
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
  async submit() {
    this.submitError = ''
    let params
    try { params = JSON.parse(this.form.params || '{}') } catch { this.submitError = 'params: not JSON'; return }
    const body = { algorithm: this.form.algorithm, params }
    if (this.form.priority) body.priority = this.form.priority
    if (this.form.queue) body.queue = this.form.queue
    try {
      const task = await this.api('/api/v1/tasks/', { method: 'POST', body })
      if (!this.tasks.some((x) => x.id === task.id)) this.tasks.unshift({ ...task, _seq: 0 })
    } catch (e) { this.submitError = e.message }
  },

  async act(t, path, body, method = 'POST') {
    try {
      const task = await this.api(`/api/v1/tasks/${t.id}/${path}/`, { method, body })
      return task
    } catch (e) { alert(e.message) }
  },

  async cancel(t) {
    const task = await this.act(t, 'cancel')
    if (task && task.status !== t.status) Object.assign(t, { status: task.status, cancel_requested: task.cancel_requested })
  },

  async retry(t) {
    const task = await this.act(t, 'retry')
    if (task && !this.tasks.some((x) => x.id === task.id)) this.tasks.unshift({ ...task, _seq: 0 })
  },

  async setPriority(t, value) {
    const task = await this.act(t, 'priority', { priority: Number(value) }, 'PATCH')
    if (task) t.priority = task.priority
  },

  async moveToFront(t) {
    try {
      await this.api(`/api/v1/queues/${t.queue}/reorder/`, { method: 'POST', body: { task_ids: [t.id] } })
      this.reorderedAt = Date.now()
    } catch (e) { alert(e.message) }
  },

  // Operators drag a waiting row onto another waiting row of the same queue: it takes that row's place.
  canReorder(t) { return this.user?.operator && t.status === 'PENDING' },
  canDrop(t) {
    const dragged = this.tasks.find((x) => x.id === this.dragId)
    return dragged && dragged.id !== t.id && this.canReorder(t) && dragged.queue === t.queue
  },

  async dropOn(t) {
    const dragged = this.dragId
    this.dragId = this.dropTarget = null
    if (!dragged || dragged === t.id) return
    try {
      const waiting = await this.api(`/api/v1/queues/${t.queue}/tasks/?limit=1000`)
      const position = waiting.tasks.findIndex((x) => x.id === t.id) + 1
      if (position < 1) return
      await this.api(`/api/v1/queues/${t.queue}/reorder/`, { method: 'POST', body: { task_id: dragged, position } })
      this.reorderedAt = Date.now()
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

  // --- the drawer: one task's socket, replayed from after_seq --------------------------------
  openDrawer(id) {
    this.closeDrawer()
    const t = this.tasks.find((x) => x.id === id)
    this.drawer = { task: t ? { ...t } : null, socket: null, lastSeq: 0, log: [], points: [], connection: 'connecting', attempts: 0 }
    this.drawerConnect(id)
  },

  drawerConnect(id) {
    const ws = new WebSocket(wsUrl(`/ws/tasks/${id}/?after_seq=${this.drawer.lastSeq}`))
    this.drawer.socket = ws
    ws.onopen = () => ws.send(JSON.stringify({ type: 'auth', token: this.tokens.access }))
    ws.onmessage = (m) => this.onDrawerEvent(JSON.parse(m.data))
    ws.onclose = () => {
      if (this.drawer.socket !== ws) return
      this.drawer.connection = 'reconnecting…'
      setTimeout(() => this.drawer.socket === ws && this.drawerConnect(id), backoff(this.drawer.attempts++))
    }
  },

  onDrawerEvent(ev) {
    const d = this.drawer
    if (ev.event === 'task.snapshot') {
      d.task = { ...ev.task }
      d.connection = 'live'
      d.attempts = 0
      return
    }
    if (!ev.event?.startsWith('task.') || ev.seq <= d.lastSeq) return
    d.lastSeq = ev.seq
    const time = (ev.timestamp || '').slice(11, 23)
    if (ev.event === 'task.log') {
      d.log.push({ seq: ev.seq, time, text: ev.data?.line ?? '' })
    } else {
      if (ev.event === 'task.progress' && ev.metrics && Object.keys(ev.metrics).length) d.points.push(ev.metrics)
      if (ev.event !== 'task.progress') d.log.push({ seq: ev.seq, time, text: `— ${ev.event.slice(5)} —` })
      if (d.task && !ev.replay) {
        d.task.status = ev.status
        d.task.progress = { percent: ev.percent, stage: ev.stage, message: ev.message, metrics: ev.metrics }
      }
    }
    if (d.log.length > MAX_LOG) d.log.splice(0, d.log.length - MAX_LOG)
  },

  closeDrawer() {
    const ws = this.drawer.socket
    this.drawer = { task: null, socket: null, lastSeq: 0, log: [], points: [], connection: 'live', attempts: 0 }
    if (ws) ws.close()
  },

  metricNames() {
    const names = new Set()
    for (const p of this.drawer.points) for (const [k, v] of Object.entries(p)) if (typeof v === 'number') names.add(k)
    return [...names]
  },

  metricLine(name) {
    const values = this.drawer.points.map((p) => p[name]).filter((v) => typeof v === 'number')
    if (!values.length) return ''
    const lo = Math.min(...values), hi = Math.max(...values), span = hi - lo || 1
    const step = values.length > 1 ? 300 / (values.length - 1) : 0
    return values.map((v, i) => `${(i * step).toFixed(1)},${(95 - 90 * (v - lo) / span).toFixed(1)}`).join(' ')
  },

  lastMetric(name) {
    for (let i = this.drawer.points.length - 1; i >= 0; i--) {
      const v = this.drawer.points[i][name]
      if (typeof v === 'number') return Number.isInteger(v) ? v : v.toFixed(4)
    }
    return ''
  },

  // --- view helpers ---------------------------------------------------------------------------
  visibleTasks() {
    return this.tasks.filter((t) => this.matches({ status: t.status, queue: t.queue, algorithm: t.algorithm }))
  },
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

  metricsSvg() {
    const lines = this.metricNames().map((name, i) => `<polyline class="m${i % 8}" points="${this.metricLine(name)}"></polyline>`)
    return `<svg viewBox="0 0 300 100" preserveAspectRatio="none">${lines.join('')}</svg>`
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
}))

window.Alpine = Alpine
Alpine.start()
