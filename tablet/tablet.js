// treadguard's clinician page: contract v1 (docs/daemon.md) over MQTT over WebSockets, with
// MQTT.js (node_modules/mqtt, installed by `npm ci` in this folder). The daemon decides
// everything; this page shows what it says and sends what the clinician presses.
//
// Query parameters (docs/tablet-page.md): treadmill=<id> (default tm-sim), prefix=<topic prefix>
// (default treadmill/<id>), broker=<ws:// or wss:// URL> (default: /mqtt where the page came
// from), user=<broker account>; the password is asked for when the broker wants one.
"use strict";

const params = new URLSearchParams(location.search);
const TREADMILL = params.get("treadmill") || "tm-sim";
const PREFIX = params.get("prefix") || `treadmill/${TREADMILL}`;
// Over https, nginx serves the page and passes /mqtt on to Mosquitto (config/nginx/); over http
// (scripts/run), Mosquitto serves the page itself, and takes WebSockets on any path.
const BROKER =
  params.get("broker") ||
  `${location.protocol === "https:" ? "wss" : "ws"}://${location.host}/mqtt`;
const TOPIC = {
  cmd: `${PREFIX}/cmd`,
  reply: `${PREFIX}/reply`,
  state: `${PREFIX}/state`,
  events: `${PREFIX}/events`,
  availability: `${PREFIX}/availability`,
};

// Read-only queries (docs/tablet-contract.md, "Queries"): on this account's own topic, answered
// on its own reply topic, which only this account may read (the broker's ACL).
function queryTopics() {
  const account = credentials().username || "tablet";
  return { ask: `${PREFIX}/query/${account}`, answers: `${PREFIX}/query/${account}/reply` };
}
const QUERY_TIMEOUT_MS = 10000;
const REPORT_TIMEOUT_MS = 60000; // the daemon writes the report page in a process of its own
const HISTORY_LIMIT = 20;

const HEARTBEAT_MS = 1000; // docs/tablet-contract.md: a tablet sends one every second (SR-12)
const REPLY_TIMEOUT_MS = 5000;
// Heartbeats unanswered this long: the daemon is not there, whatever the broker says.
const NO_ANSWER_MS = 3000;
// The daemon publishes at least every 500 ms while the belt moves; three missed is stale.
const STATE_STALE_MS = 1500;
const STANDSTILL_MPH = 0.05; // safety/limits.py
// The protocol's band (SR-1, docs/requirements.md), until the state lists the programs' own bands. The
// daemon refuses anything outside its band whatever this page sends.
const BAND = [0.8, 1.2];
const STEP_MPH = 0.1;
const CAP_WARNING_S = 30; // the default [safety] cap_warning_s, for a page opened after it
const LOG_LINES = 60;
const CAP_STEP_S = 30; // the cap choices of a continuous program: every 30 s of its range

// The daemon's programs, from the state's "programs" extension: name -> {title, caps (the cap
// choices, s), perInterval (interval programs: a cap counts whole intervals), band}. A program
// a clinic adds to the daemon appears here without a new page.
let PROGRAMS = {};
let programChoice = { default: null, returning: null };
let programsKey = "";

function takePrograms(ext) {
  const key = JSON.stringify(ext || null);
  if (key === programsKey) return false;
  programsKey = key;
  PROGRAMS = {};
  for (const [name, p] of Object.entries((ext && ext.all) || {})) {
    const step = p.interval_s || CAP_STEP_S;
    const caps = [];
    for (let cap = p.cap_s.min; cap <= p.cap_s.max + 1e-9; cap += step) caps.push(cap);
    PROGRAMS[name] = { title: p.title, caps, perInterval: p.interval_s || null, band: p.band_mph };
  }
  programChoice = { default: ext ? ext.default : null, returning: ext ? ext.returning : null };
  return true;
}

// The daemon's clock less the browser's monotonic one (performance.now(), in s), from states
// and events published while connected (retained ones may be old). Each sample is late by its
// network delay, so the largest seen lately is the nearest: stamps come out a little old,
// never new. Measured against the monotonic clock, not the tablet's wall clock: network time
// stepping the tablet's clock (a slow tablet set right) while the page is open changes no
// stamp, where old samples taken against the wall clock would stamp every command seconds in
// the future, to be refused. (A tablet that slept: the first state after it is a larger
// sample, and wins.) The samples are of one daemon process: a state from another (its
// `instance`, a restart, perhaps with its clock set back meanwhile) starts them afresh.
const clockSamples = [];
let clockInstance = null;
function noteDaemonTime(ts, instance) {
  if (typeof ts !== "number" || !Number.isFinite(ts)) return;
  if (typeof instance === "string" && instance !== clockInstance) {
    clockSamples.length = 0;
    clockInstance = instance;
  }
  clockSamples.push(ts - performance.now() / 1000);
  if (clockSamples.length > 40) clockSamples.shift();
}
// Now (unix s) in the daemon's clock as far as the page can tell; the tablet's own clock until
// the daemon has been heard.
function daemonNow() {
  if (!clockSamples.length) return Date.now() / 1000;
  return performance.now() / 1000 + Math.max(...clockSamples);
}

function bandOf(program) {
  return (PROGRAMS[program] && PROGRAMS[program].band) || BAND;
}

// The contract's codes in plain words: WORDS comes from words.js, the copy of the tables in
// contract/event_text.py (one vocabulary for the page and the terminal). A code this page does
// not know (a newer daemon's) is shown as it is rather than hidden.
function causeWords(cause) {
  return WORDS.causes[cause] || String(cause);
}
function reasonWords(reason) {
  return WORDS.endReasons[reason] || String(reason);
}
function sensorWords(sensor) {
  return WORDS.sensors[sensor] || String(sensor);
}
function eventWords(type) {
  return WORDS.events[type] || `Event ${type}`;
}

// A program's name in a message of the daemon, by its title: "(first_session), not
// reverse_walking" reads as "(First treadmill session), not Reverse walking". Only names that
// look like codes (with an underscore): a one-word name reads as a word already.
function withTitles(text) {
  let out = text;
  for (const [name, p] of Object.entries(PROGRAMS)) {
    if (name.includes("_") && p.title) {
      const code = name.replace(/[.*+?^${}()|[\]\\]/g, "\\$&");
      out = out.replace(new RegExp(`\\b${code}\\b`, "g"), p.title);
    }
  }
  return out;
}

const $ = (id) => document.getElementById(id);
// The user's code as typed, composed (NFC): "é" is one character or two (e and a combining
// accent) depending on the keyboard, and the daemon takes only the one form of a text, so that
// one patient's record never splits under two codes that look the same.
const typedUser = () => $("user").value.trim().normalize("NFC");
// Who enters the clinician's record (pain, notes, measures, a confirmation): sent with each of
// those commands, so the journal, the reports and the FHIR export (performer) say who did.
// Kept on this tablet until changed, as a clinician works a whole shift on one.
const RECORD_COMMANDS = new Set([
  "outcome_before",
  "outcome_after",
  "record_measure",
  "confirm_first_session",
]);
// Only ordinary spaces are taken off its ends (a keyboard's stray one): any other character is
// the code's, and is checked as the treadmill checks it (clinicianProblem), never dropped.
const typedClinician = () => $("clinician").value.replace(/^ +| +$/g, "").normalize("NFC");

// The treadmill's rules for a code a person types for a person (contract/codes.py, one check
// for commands, queries and the command line): every character shows as itself, no space but
// the ordinary one and none at either end, 1-64 characters, Unicode's composed form. A code
// the page let through would be refused with every entry of the record it goes with, so the
// page says what is wrong as it is typed, keeps none of it, and sends no record under it.
// (A browser whose Unicode is newer than the treadmill's may still take a character the
// treadmill calls unassigned: the treadmill's refusal is then shown as any other.)
const CODE_MAX_CHARS = 64;
const CHARACTER_WORDS = [
  [/^\p{Cf}$/u, "an invisible formatting character"], // bidi overrides, zero-width space, joiners
  [/^\p{Cc}$/u, "a control character"],
  [/^\p{Cs}$/u, "a lone surrogate"],
  [/^\p{Co}$/u, "a private-use character"],
  [/^\p{Cn}$/u, "an unassigned character"],
  [/^\p{Zl}$/u, "a line separator"],
  [/^\p{Zp}$/u, "a paragraph separator"],
];
// Shown as nothing though of a visible category (contract/codes.py's _INVISIBLE): the Hangul
// fillers, the combining grapheme joiner, the Khmer inherent vowels, the Mongolian free
// variation selectors, the variation selectors, and the blank Braille pattern.
function invisible(n) {
  return (
    [0x034f, 0x115f, 0x1160, 0x17b4, 0x17b5, 0x2800, 0x3164, 0xffa0].includes(n) ||
    (n >= 0x180b && n < 0x1810) ||
    (n >= 0xfe00 && n < 0xfe10) ||
    (n >= 0xe0100 && n < 0xe01f0)
  );
}

function characterProblem(char) {
  for (const [category, words] of CHARACTER_WORDS) if (category.test(char)) return words;
  if (invisible(char.codePointAt(0))) return "an invisible character";
  // A no-break, ideographic or thin space reads as the ordinary one.
  if (char !== " " && /^\p{Zs}$/u.test(char)) return "a space other than the ordinary space";
  return null;
}

function codePoint(char) {
  return `U+${char.codePointAt(0).toString(16).toUpperCase().padStart(4, "0")}`;
}

// Why `value` cannot be a code, in words ("the code contains a space other than the ordinary
// space (U+00A0)"), or null.
function codeProblem(value) {
  for (const char of value) {
    const problem = characterProblem(char);
    if (problem !== null) return `the code contains ${problem} (${codePoint(char)})`;
  }
  const length = [...value].length;
  if (length === 0) return `the code is empty: a code of 1-${CODE_MAX_CHARS} characters is needed`;
  if (value !== value.trim()) return "the code begins or ends with a space";
  if (length > CODE_MAX_CHARS) {
    return `the code is ${length} characters long; a code is at most ${CODE_MAX_CHARS}`;
  }
  if (value.normalize("NFC") !== value) return "the code is not in Unicode's composed form";
  return null;
}

// What is wrong with the clinician's code as typed, or null: none typed is none sent.
function clinicianProblem() {
  const typed = typedClinician();
  return typed === "" ? null : codeProblem(typed);
}

// Everything the page knows. `render` draws it; nothing else touches the controls' state.
const view = {
  link: "connecting", // connecting | connected | disconnected | login | nolib
  linkDetail: "",
  availability: null, // the daemon's retained "online" / "offline"; null: not seen since connect
  state: null,
  stateAt: 0, // performance.now() of its arrival: the daemon's clock is not the tablet's
  unansweredSince: null, // the first heartbeat sent since the last reply of the daemon
  countdownEnd: null,
  capWarned: null, // the session id the cap warning was given for
  target: null, // the session's target: the state says 0 during a countdown
  // The session under way, or the last one, kept after it ended until a new one starts: its
  // id, user, program, cap_s, elapsed_s, top (the top speed this page saw), and once ended its
  // reason and belt_s (the belt time the daemon counted).
  last: null,
  // This page's start waiting to be known as accepted (its reply) and to have its session
  // (session_started): {startId, user, pain (asked before it, or null), accepted, sessionId}.
  starting: null,
  // What the patient view last showed a start from history would start, for one user:
  // {user, program, cap_s}, sent with such a start (the daemon refuses it if it would now
  // start something else); null: none shown.
  shownStart: null,
  // The sessions this page's starts opened, while they run: id -> {user, instance (of the
  // daemon that opened it), seen (in a state)}. Only these ask for the record after them here:
  // another tablet's session is its clinician's to record.
  own: new Map(),
  // The pain asked before a start of this page that is not on its session's record yet (the
  // clinician's code not valid, a refusal, no answer): [{sessionId, pain, why, fix}], in red
  // until it is (why: in words; fix: what sends it again), sent again once the code is
  // corrected or the link is back.
  painHeld: [],
  // This page's sessions that have ended and wait for the record after them, oldest first:
  // [{id, user}]. The form is for the first until it is saved or put off (Later); what is
  // typed in it belongs to `formFor`, and is cleared, never moved, when the form is for
  // another session.
  toRecord: [],
  formFor: null,
  recordSaid: null, // what the page says of the form's last Save ({text, bad}), or null
  // The patient view, while open: the user, the history answer and the report's answer (null
  // until they come), and what the page says of them (status, bad: an error); today in the
  // clinic's zone (from the history's timezone); whether a measure is being entered, what the
  // page says of it ({text, bad}, or null), and whether to bring the measures into view once
  // the next history comes (after a measure was saved).
  patient: null,
  loginTried: false, // the last login had a password: a refusal is then about what was typed
  message: null,
  why: undefined, // offlineWhy() at the last render: undefined before the first
  broken: null, // an error of the page itself: offline, no heartbeat, until reloaded
};
const pending = new Map(); // command id -> { type, timer }
const asked = new Map(); // query id -> { onAnswer, timer }
const ownHeartbeats = new Set(); // this page's recent heartbeat ids
// E-STOPs and Stops sent but not acknowledged when the link dropped: sent again on reconnect
// (a stop is obeyed however late it arrives).
let resendOnConnect = [];
let client = null;
let heartbeat = null;

// ------------------------------------------------------------------ helpers

function commandId() {
  // crypto.randomUUID needs a secure context; a page on http://<gym address> is not one.
  const bytes = crypto.getRandomValues(new Uint8Array(12));
  return "page-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
}

function round1(x) {
  return Math.round(x * 10) / 10;
}

function clock(seconds) {
  if (typeof seconds !== "number") return "–";
  const s = Math.max(0, Math.round(seconds));
  return `${Math.floor(s / 60)}:${String(s % 60).padStart(2, "0")}`;
}

function mph(x) {
  return typeof x === "number" ? x.toFixed(2) : "–";
}

function sentence(text) {
  return text ? text[0].toUpperCase() + text.slice(1) : "";
}

function capWords(program, cap) {
  const p = PROGRAMS[program];
  return p && p.perInterval ? `${cap / p.perInterval} intervals` : `${clock(cap)} min`;
}

function log(text, bad = false) {
  const li = document.createElement("li");
  const time = document.createElement("time");
  time.textContent = new Date().toLocaleTimeString([], { hour12: false });
  li.append(time, text);
  if (bad) li.className = "bad";
  const list = $("log");
  list.prepend(li);
  while (list.children.length > LOG_LINES) list.lastElementChild.remove();
}

function say(text) {
  view.message = text;
  render();
}

// ------------------------------------------------------------------ what the page may do

// The daemon's own rule for its periodic state (mqtt_contract.belt_moving): not during a
// countdown, when the belt still stands.
function moving(state) {
  return (
    ["running", "stopping"].includes(state.state) ||
    !(typeof state.speed_mph === "number" && state.speed_mph <= STANDSTILL_MPH)
  );
}

// Why the page is offline, in words, or null when it is online.
function offlineWhy() {
  const now = performance.now();
  if (view.broken !== null) return `the page failed (${view.broken}): reload it`;
  if (view.link !== "connected") return "no connection to the broker";
  if (view.availability !== "online") {
    return view.availability === "offline"
      ? "the treadmill is offline"
      : "waiting for the treadmill";
  }
  if (view.state === null) return "no state from the treadmill yet";
  if (view.unansweredSince !== null && now - view.unansweredSince > NO_ANSWER_MS) {
    return "the treadmill does not answer";
  }
  if (moving(view.state) && now - view.stateAt > STATE_STALE_MS) {
    return "the treadmill's state is out of date";
  }
  return null;
}

// ------------------------------------------------------------------ drawing

function setLevel(id, level, words) {
  const el = $(id);
  el.dataset.level = level;
  el.querySelector(".words").textContent = words;
}

function render() {
  try {
    draw();
  } catch (err) {
    pageFailed(err);
    // What was drawn last can no longer be trusted: everything off but E-STOP.
    for (const button of document.querySelectorAll("button:not(#estop)")) button.disabled = true;
  }
  updateHeartbeat();
}

function pendingOf(type) {
  for (const sent of pending.values()) if (sent.type === type) return true;
  return false;
}

function draw() {
  const s = view.state;
  const why = offlineWhy();
  const online = why === null;
  document.body.dataset.online = String(online);
  // Going offline and back is part of the session's story: into the log, once each way.
  if (why !== view.why) {
    if (why !== null && view.why === null) log(`Offline: ${why}`, true);
    if (why === null && view.why !== undefined) log("Online: the controls are on");
    view.why = why;
  }

  const linkWords = {
    connecting: ["wait", "Broker: connecting"],
    connected: ["ok", "Broker: connected"],
    disconnected: ["bad", "Broker: disconnected, retrying"],
    login: ["bad", "Broker: login needed"],
    nolib: ["bad", "MQTT library missing (run npm ci in tablet/)"],
  }[view.link];
  setLevel("link", linkWords[0], linkWords[1] + (view.linkDetail ? ` (${view.linkDetail})` : ""));
  if (view.link !== "connected") setLevel("daemon", "wait", "Treadmill: unknown");
  else if (why === "the treadmill does not answer")
    setLevel("daemon", "bad", "Treadmill: no answer");
  else if (view.availability === "online") setLevel("daemon", "ok", "Treadmill: online");
  else if (view.availability === "offline") setLevel("daemon", "bad", "Treadmill: offline");
  else setLevel("daemon", "wait", "Treadmill: waiting");
  $("treadmill").textContent = `Treadmill ${s && s.treadmill_id ? s.treadmill_id : TREADMILL}`;
  $("treadmill").title = $("treadmill").textContent; // a long id is cut short on screen

  $("offline").hidden = online;
  $("offline").querySelector(".words").textContent =
    `Offline: ${why}. Every control is off: use the treadmill's own stop button.`;

  const badge = $("state");
  badge.dataset.state = s ? s.state : "unknown";
  badge.querySelector(".words").textContent = s
    ? WORDS.states[s.state] || s.state.toUpperCase()
    : "NO STATE";
  $("last-known").hidden = online || !s;

  // The latch: a banner that names the cause in words, and says what Reset needs: the belt
  // at a standstill, and only what this cause needs cleared (a tablet's E-STOP: nothing).
  const latched = s && s.latched;
  const standstill = s !== null && typeof s.speed_mph === "number" && s.speed_mph <= STANDSTILL_MPH;
  $("banner").hidden = !latched;
  if (latched) {
    $("banner-title").textContent = latched.kind === "fault" ? "FAULT" : "EMERGENCY STOP";
    $("banner-cause").textContent = sentence(causeWords(latched.cause));
    $("banner-hint").textContent = !standstill
      ? "The belt is stopping: wait until it stands still."
      : WORDS.causeHints[latched.cause] || "Clear the cause, then press Reset.";
  }

  // Live readouts. Offline, the speed is unknown: a stale figure would read as the belt's.
  const session = s && s.session;
  const inCountdown = s && s.state === "countdown";
  $("speed").textContent = online ? mph(s.speed_mph) : "—";
  $("speed-unit").textContent = online ? "mph" : "no link";
  // During a countdown the state's target is 0 (the belt is held still): the target shown is
  // the one the session will run at.
  const shownTarget = inCountdown ? view.target : s && s.target_mph;
  $("target").textContent = online ? mph(shownTarget) : "—";
  $("target-unit").textContent = online ? "mph" : "no link";
  const last = view.last;
  if (session) {
    const title = PROGRAMS[session.program] ? PROGRAMS[session.program].title : session.program;
    $("session-info").textContent =
      `Session ${session.id}: ${session.user}, ${title}, cap ${capWords(session.program, session.cap_s)}`;
    $("elapsed").textContent = `${clock(session.elapsed_s)} of ${clock(session.cap_s)}`;
    $("remaining").textContent = clock(session.remaining_s);
    const pct = session.cap_s > 0 ? Math.min(100, (100 * session.elapsed_s) / session.cap_s) : 0;
    $("progress-fill").style.width = `${pct}%`;
    $("progress").setAttribute("aria-valuenow", String(Math.round(pct)));
  } else if (last) {
    // The session just ended stays in view until the next starts: how long the belt ran, how
    // it ended, how fast it went.
    const title = PROGRAMS[last.program] ? PROGRAMS[last.program].title : last.program;
    const who = last.user ? ` (${last.user}, ${title})` : "";
    const how = last.reason ? sentence(reasonWords(last.reason)) : "Ended";
    const top = typeof last.top === "number" ? `; top speed ${mph(last.top)} mph` : "";
    $("session-info").textContent = `Last session ${last.id}${who}: ${how}${top}.`;
    const belt = typeof last.belt_s === "number" ? last.belt_s : last.elapsed_s;
    $("elapsed").textContent =
      typeof last.cap_s === "number" ? `${clock(belt)} of ${clock(last.cap_s)}` : clock(belt);
    $("remaining").textContent = "ended";
  } else {
    $("session-info").textContent = "No session";
    $("elapsed").textContent = "–";
    $("remaining").textContent = "–";
    $("progress-fill").style.width = "0";
    $("progress").setAttribute("aria-valuenow", "0");
  }
  const capNear =
    session &&
    (view.capWarned === session.id ||
      (s.state === "running" && session.remaining_s <= CAP_WARNING_S));
  $("cap-warning").hidden = !capNear;
  $("progress").classList.toggle("warn", Boolean(capNear));
  if (capNear) {
    $("cap-warning").querySelector(".words").textContent =
      `Cap: the session ends in ${clock(session.remaining_s)}; the belt then stops by itself.`;
  }

  $("countdown").hidden = !inCountdown;
  if (inCountdown) {
    const left =
      view.countdownEnd === null ? null : Math.ceil((view.countdownEnd - performance.now()) / 1000);
    $("countdown-s").textContent = left === null ? "a moment" : `${Math.max(left, 0)} s`;
  }

  const stale = new Set(s ? s.stale : []);
  for (const [id, hand, sensor] of [
    ["grip-left", "left", "grip_left"],
    ["grip-right", "right", "grip_right"],
  ]) {
    const name = hand === "left" ? "Left hand" : "Right hand";
    // Offline, what the sensors say now is not known: "held" from a minute ago is no comfort.
    if (!online) setLevel(id, "wait", `${name}: ?`);
    else if (stale.has(sensor)) setLevel(id, "bad", `${name}: NO SIGNAL`);
    else if (s.grip[hand]) setLevel(id, "ok", `${name}: held`);
    else setLevel(id, "bad", `${name}: RELEASED`);
  }
  if (!online) setLevel("fall", "wait", "Fall: ?");
  else if (stale.has("fall")) setLevel("fall", "bad", "Fall sensor: NO SIGNAL");
  else if (s.fall) setLevel("fall", "bad", "FALL");
  else setLevel("fall", "ok", "No fall");

  // Controls: what the contract allows in this state, and nothing while offline.
  const st = s ? s.state : null;
  const hasSession = Boolean(session) && ["countdown", "running"].includes(st);
  const target = view.target;
  // A command waiting for its answer keeps its button off: a double tap sends it once.
  $("start").disabled = !(
    online &&
    st === "idle" &&
    !latched &&
    typedUser() !== "" &&
    !pendingOf("start_session")
  );
  // The setup only matters between sessions (and not while a commissioning run holds the
  // treadmill); -, + and the set target only while a session may run. What is hidden leaves
  // room for the rest: every shown control stays on screen.
  const run = commissioningRun(s);
  // After a session this page started (once the treadmill is idle: a latched stop is reset
  // first), its record takes the setup's place, until saved or put off (Later); then the next
  // of this page's sessions that waits for its own, if any.
  const waiting = view.toRecord.length ? view.toRecord[0] : null;
  const recording = Boolean(waiting && st === "idle" && !latched);
  if (waiting && view.formFor !== waiting.id) {
    // What was typed belonged to another session (saved, or put off): never carried over.
    for (const id of ["pain-after", "exertion", "record-notes"]) $(id).value = "";
    view.formFor = waiting.id;
    view.recordSaid = null;
  }
  $("setup").hidden =
    (st !== null && st !== "idle") || Boolean(run && !run.outcome) || (recording && st === "idle");
  // Who enters the record: wherever a record is entered, and while a pain before waits for a
  // corrected code (during the session too).
  const problem = clinicianProblem();
  $("who").hidden = $("setup").hidden && !recording && view.painHeld.length === 0;
  $("clinician").setAttribute("aria-invalid", String(problem !== null));
  $("clinician-problem").textContent = problem
    ? `${sentence(problem)}: not kept, and no record is sent under it. Type it again.`
    : "";
  $("pain-held").hidden = view.painHeld.length === 0;
  $("pain-held").querySelector(".words").textContent = view.painHeld
    .map(
      (held) =>
        `Pain before session ${held.sessionId} (${held.pain}/10) is NOT on record: ` +
        `${held.why}. ${held.fix}`,
    )
    .join(" ");
  $("speed-row").hidden = !["countdown", "running", "stopping"].includes(st);
  $("user").disabled = $("program").disabled = $("cap").disabled = !(online && st === "idle");
  $("pain-before").disabled = $("user").disabled;
  // The record after a session: once it has ended, until saved or put off.
  $("record").hidden = !recording;
  if (recording) {
    const more = view.toRecord.length - 1;
    $("record-title").textContent =
      `After session ${waiting.id} (${waiting.user})` +
      (more > 0 ? `; ${more} more of this tablet's sessions wait` : "");
  }
  $("record-status").textContent = view.recordSaid ? view.recordSaid.text : "";
  $("record-status").classList.toggle("bad", Boolean(view.recordSaid && view.recordSaid.bad));
  $("record-later").disabled = pendingOf("outcome_after");
  $("record-save").disabled = !(
    online &&
    recording &&
    $("pain-after").value !== "" &&
    !pendingOf("outcome_after")
  );
  $("set-target").textContent = hasSession && target !== null ? target.toFixed(1) : "–";
  $("slower").disabled = !(
    online &&
    hasSession &&
    target !== null &&
    round1(target - STEP_MPH) >= bandOf(session.program)[0]
  );
  $("faster").disabled = !(
    online &&
    hasSession &&
    target !== null &&
    round1(target + STEP_MPH) <= bandOf(session.program)[1]
  );
  $("stop").disabled = !(
    online &&
    Boolean(session) &&
    ["countdown", "running", "stopping"].includes(st)
  );
  // Reset only with something latched and the belt at a standstill (SR-6); whether the cause is
  // gone (hands back on the handrails) the treadmill judges, and says so if not.
  $("reset").disabled = !(online && Boolean(latched) && standstill && !pendingOf("reset"));
  // E-STOP stays live while the broker link is up, even when the daemon seems not to answer:
  // a stop that might arrive late, or not at all, costs nothing, and one that arrives helps.
  const linked = view.link === "connected";
  $("estop").disabled = !linked;
  $("estop-note").textContent = online
    ? ""
    : linked
      ? "also use the treadmill's stop button"
      : "no link: use the treadmill's stop button";

  // The patient view only between sessions: anything else (a start from another tablet, a
  // latched stop, the link lost) closes it, and the controls are back at once.
  if (view.patient && !(online && st === "idle" && !latched)) closePatient();
  $("patient-open").disabled = !(
    online &&
    st === "idle" &&
    !latched &&
    typedUser() !== ""
  );
  drawPatient();

  $("message").hidden = !view.message;
  $("message").querySelector(".words").textContent = view.message || "";
  drawCommissioning(s, online);
}

// A guided commissioning run (the state's commissioning.run, docs/commissioning.md): the step,
// what the technician is asked in the run's own words, the last proof's figures, and Confirm
// and Abort. Hidden when no run is on.
function commissioningRun(s) {
  return (s && s.commissioning && s.commissioning.run) || null;
}

const OUTCOME_WORDS = {
  passed: "Commissioning passed: every stop was proven. The treadmill may take patients.",
  failed: "Commissioning failed",
  aborted: "Commissioning aborted: the belt was stopped and nothing was proven.",
};

function proofWords(proof) {
  let words = `${proof.passed ? "Passed" : "Failed"}: ${proof.title}`;
  if (typeof proof.standstill_s === "number") {
    words += `: the belt stood still ${proof.standstill_s.toFixed(2)} s after the stop`;
    if (typeof proof.deceleration_mph_per_s === "number") {
      words += ` (${proof.deceleration_mph_per_s.toFixed(2)} mph per second)`;
    }
  }
  return `${words}.`;
}

function drawCommissioning(s, online) {
  const run = commissioningRun(s);
  $("commissioning").hidden = !run;
  if (!run) return;
  const over = Boolean(run.outcome);
  $("comm-step").textContent =
    over || run.index === null ? "Commissioning" : `Commissioning: step ${run.index} of ${run.of}`;
  $("comm-title").textContent = over ? "" : sentence(run.title || "");
  let prompt = run.prompt;
  if (over) {
    prompt = OUTCOME_WORDS[run.outcome] || `Commissioning ${run.outcome}`;
    if (run.outcome === "failed" && run.detail) prompt += `: ${run.detail}`;
  }
  $("comm-prompt").textContent = prompt;
  const proof = run.last_proof;
  $("comm-proof").hidden = !proof;
  if (proof) {
    $("comm-proof").textContent = proofWords(proof);
    $("comm-proof").classList.toggle("bad", !proof.passed);
  }
  $("comm-confirm").disabled = !(
    online &&
    !over &&
    run.waiting === "technician" &&
    !pendingOf("commission_confirm")
  );
  // Like E-STOP, Abort stays on while the broker link is up: it stops the belt.
  $("comm-abort").disabled = !(view.link === "connected" && !over);
  $("commissioning").querySelector(".row").hidden = over; // a run that has ended asks nothing
}

// ------------------------------------------------------------------ commands

// `clinician`: for an entry of the record, the code it was entered under, when the caller
// knows it (a pain before sent after its start); else the code typed now.
function send(type, fields = {}, clinician = undefined) {
  // Never queued while the link is down: a command must not run late, after a reconnect.
  if (!client || !client.connected) {
    if (type !== "heartbeat") say("Not sent: no connection to the broker.");
    return;
  }
  if (RECORD_COMMANDS.has(type)) {
    // Each caller says why first; this is the last guard: no entry under a code the treadmill
    // refuses (it would be refused, and the entry lost).
    const code = clinician === undefined ? typedClinician() : clinician;
    if (code !== "" && codeProblem(code) !== null) return;
    if (code !== "") fields = { ...fields, clinician: code };
  }
  const id = commandId();
  // Stamped (unix s, in the daemon's clock as far as the page can tell): a start, a speed
  // change or a heartbeat that a hung broker delivers late is refused by the daemon rather
  // than run when nobody expects it (docs/daemon.md). The daemon refuses them after 3 s, well
  // before this page gives up waiting for an answer (5 s). An entry of the record must be
  // stamped: the daemon refuses one without.
  const ts = daemonNow();
  client.publish(TOPIC.cmd, JSON.stringify({ id, type, ts, ...fields }), { qos: 1, retain: false });
  if (type === "heartbeat") {
    ownHeartbeats.add(id);
    if (ownHeartbeats.size > 20) ownHeartbeats.delete(ownHeartbeats.values().next().value);
    if (view.unansweredSince === null) view.unansweredSince = performance.now();
    return;
  }
  view.message = null;
  const timer = setTimeout(() => {
    pending.delete(id);
    startUnanswered(id);
    const words = commandWords({ type, fields });
    log(`${words}: no answer within ${REPLY_TIMEOUT_MS / 1000} s`, true);
    if (type === "outcome_before") {
      const why = `no answer within ${REPLY_TIMEOUT_MS / 1000} s`;
      holdPain(fields, why, SENT_AGAIN, sentUnder(fields));
    }
    if (type === "start_session") {
      // When in doubt, stop: should the start still arrive, this Stop follows it in order.
      send("stop");
      say(`No answer to "${words}": a Stop was sent in case it arrives late. Check the state.`);
    } else {
      say(`No answer to "${words}": check the state before you try again.`);
    }
    render();
  }, REPLY_TIMEOUT_MS);
  pending.set(id, { type, fields, timer });
  render();
  return id;
}

// A start belongs to the session it opens, and to no other: a start refused, unanswered or
// lost with the link is forgotten with the pain asked before it, so that a later session of
// the same user (started from another tablet) is never taken for this page's, nor gets it.
function startUnanswered(id) {
  startAnswered(id);
  if (view.starting && view.starting.startId === id) view.starting = null;
}
// The pain typed before a start is that start's only: once the start is answered (accepted,
// refused, unanswered, lost with the link) the field is emptied, so that the next start (most
// often the next patient's) carries no pain unless it is asked again, and one patient's pain
// never goes on another's record. A pain chosen meanwhile, for the next start, stays.
function startAnswered(id) {
  const start = view.starting;
  if (!start || start.startId !== id || start.pain === null) return;
  if ($("pain-before").value === String(start.pain)) $("pain-before").value = "";
}
// Known once both are, in whichever order they come: this page's start accepted (its reply),
// and the session it opened (session_started). Another tablet's session of the same user,
// started first, has its session_started too, but this page's start is then refused. The
// session is then this page's: the pain asked before it goes on its record, and the record
// after it is asked here once it ends.
function startKnown() {
  const start = view.starting;
  if (!start || !start.accepted || start.sessionId === undefined) return;
  view.starting = null;
  const s = view.state;
  view.own.set(start.sessionId, {
    user: start.user,
    instance: s ? s.instance : undefined,
    seen: Boolean(s && s.session && String(s.session.id) === start.sessionId),
  });
  if (start.pain !== null) {
    const fields = { session_id: start.sessionId, user: start.user, pain: start.pain };
    painGoesOn(fields, start.clinician);
  }
}

const SENT_AGAIN =
  "It is sent again once the link is back, or the Clinician code is entered again.";
const CORRECT_CODE = "Correct the Clinician code: it is sent again then.";

// The pain before one of this page's sessions, sent under the clinician's code it was entered
// under (`code`: "" for none), so that a pain held a while and sent after the tablet changed
// hands is never entered as the next clinician's; `code` null: it was entered under a code the
// treadmill would refuse (or refused), and goes under the code typed now. With a code the
// treadmill would refuse it is not sent but held, in red, until the code is corrected.
function painGoesOn(fields, code) {
  view.painHeld = view.painHeld.filter((held) => held.sessionId !== fields.session_id);
  const problem = code === null ? clinicianProblem() : null;
  const under = code === null ? typedClinician() : code;
  if (problem !== null) {
    holdPain(fields, `the clinician's code is not valid (${problem})`, CORRECT_CODE, null);
  } else if (send("outcome_before", fields, under) === undefined) {
    holdPain(fields, "not sent: no connection to the broker", SENT_AGAIN, under);
  }
}
// The code an entry was sent under ("" for none).
function sentUnder(fields) {
  return typeof fields.clinician === "string" ? fields.clinician : "";
}

// Said where the clinician looks, and kept (one pain a session: the newest) until on record,
// with the code it goes under (painGoesOn).
function holdPain(fields, why, fix, code) {
  view.painHeld = view.painHeld.filter((held) => held.sessionId !== fields.session_id);
  view.painHeld.push({
    sessionId: fields.session_id,
    user: fields.user,
    pain: fields.pain,
    why,
    fix,
    code,
  });
  log(`Pain before session ${fields.session_id} is not on record: ${why}`, true);
}

// `linkOnly`: only those held for the link (the link is back); else all (the code entered again).
function sendHeldPain(linkOnly = false) {
  for (const held of [...view.painHeld]) {
    if (!linkOnly || held.fix === SENT_AGAIN) {
      painGoesOn({ session_id: held.sessionId, user: held.user, pain: held.pain }, held.code);
    }
  }
}

function commandWords(sent) {
  switch (sent.type) {
    case "outcome_before":
      return `Pain before session ${sent.fields.session_id}`;
    case "outcome_after":
      return `Record of session ${sent.fields.session_id}`;
    case "record_measure":
      return `${measureWords(sent.fields.kind, sent.fields.value)} for ${sent.fields.user}`;
    case "start_session":
      return `Start for ${sent.fields.user}`;
    case "set_speed":
      return `Target ${sent.fields.mph.toFixed(1)} mph`;
    case "estop":
      return "E-STOP";
    case "commission_confirm":
      return "Confirmation";
    case "commission_abort":
      return "Abort of the commissioning";
    default:
      return sentence(sent.type);
  }
}

// QoS 1 is "at least once": an event whose PUBACK was lost with the daemon's connection is
// published again. Its event_id shows the second copy, which is dropped.
const eventsSeen = new Set();
function firstTime(eventId) {
  if (typeof eventId !== "string") return true;
  if (eventsSeen.has(eventId)) return false;
  eventsSeen.add(eventId);
  if (eventsSeen.size > 1024) eventsSeen.delete(eventsSeen.values().next().value);
  return true;
}

function onReply(reply) {
  // Refusals the daemon coalesced (rate_limited, under a flood): one reply, many commands.
  if (Array.isArray(reply.ids)) {
    for (const id of reply.ids) onOneReply({ ...reply, id });
    return;
  }
  onOneReply(reply);
}

function onOneReply(reply) {
  // Only answers to this page's own commands show that the daemon hears this page (another
  // tablet's replies say nothing of whether this page's commands get through).
  if (ownHeartbeats.delete(reply.id)) {
    view.unansweredSince = null;
    return;
  }
  const sent = pending.get(reply.id);
  if (!sent) return; // another tablet's command
  view.unansweredSince = null;
  clearTimeout(sent.timer);
  pending.delete(reply.id);
  if (reply.ok) {
    if (sent.type === "set_speed") view.target = sent.fields.mph;
    if (sent.type === "start_session" && view.starting && view.starting.startId === reply.id) {
      startAnswered(reply.id);
      view.starting.accepted = true;
      startKnown();
    }
    if (sent.type === "outcome_before") {
      view.painHeld = view.painHeld.filter((held) => held.sessionId !== sent.fields.session_id);
    }
    if (sent.type === "outcome_after") {
      // Asked no more; the form is cleared at its next drawing (it is for another session).
      view.toRecord = view.toRecord.filter((w) => w.id !== sent.fields.session_id);
      if (view.formFor === sent.fields.session_id) view.formFor = null;
    }
    if (sent.type === "record_measure") measureSaved(sent.fields);
    log(`${commandWords(sent)}: accepted`);
    return;
  }
  const error = reply.error || {};
  const why = error.message
    ? withTitles(error.message)
    : WORDS.refusals[error.code] || error.code || "no reason given";
  const text = `Refused: ${sentence(why)}`;
  startUnanswered(reply.id);
  log(`${commandWords(sent)}: ${text}`, true);
  // A measure's refusal beside what was typed, which stays for the clinician to correct.
  if (sent.type === "record_measure" && measureOpen(sent.fields.user) && view.patient.entering) {
    view.patient.measure = { text, bad: true };
  } else if (sent.type === "outcome_before") {
    // Refused as invalid: the one part of it typed is the clinician's code, which the
    // treadmill refuses, so it goes under the code corrected. Refused for anything else (too
    // late, say): under the code it was entered under still.
    const code = error.code === "invalid_command" ? null : sentUnder(sent.fields);
    holdPain(sent.fields, text, CORRECT_CODE, code);
  } else if (sent.type === "outcome_after" && view.formFor === sent.fields.session_id) {
    view.recordSaid = { text: `Not saved: ${text}`, bad: true }; // what was typed stays
  } else {
    say(text);
  }
}

// ------------------------------------------------------------------ what the daemon says

function onState(state) {
  const before = view.state;
  view.state = state;
  view.stateAt = performance.now();
  if (takePrograms(state.programs)) fillPrograms();
  const session = state.session;
  if (!session) {
    view.target = null;
  } else if (typeof state.target_mph === "number" && state.target_mph >= bandOf(session.program)[0]) {
    view.target = state.target_mph;
  }
  if (before && before.state !== state.state && state.state !== "countdown")
    view.countdownEnd = null;
  ownSessionsOver(state);
  if (session) {
    if (!view.last || String(view.last.id) !== String(session.id)) {
      newLast({ id: session.id, top: null, reason: null, belt_s: null });
    }
    Object.assign(view.last, {
      user: session.user,
      program: session.program,
      cap_s: session.cap_s,
      elapsed_s: session.elapsed_s,
    });
    if (typeof state.speed_mph === "number" && Number.isFinite(state.speed_mph)) {
      view.last.top = Math.max(view.last.top || 0, state.speed_mph);
    }
  }
}

// One of this page's sessions is over once the treadmill no longer has it, whether or not its
// session_ended is heard (a daemon killed mid-session publishes none; the restarted one
// announces it, but the page may have been away then): a state of another daemon process (a
// restart closes what a crash left open), or, once a state has shown the session, a state with
// another session or none. The record after it is then asked here as after any end.
function ownSessionsOver(state) {
  const current = state.session ? String(state.session.id) : null;
  for (const [id, own] of view.own) {
    if (typeof own.instance !== "string" && current === id) own.instance = state.instance;
    const otherDaemon =
      typeof state.instance === "string" &&
      typeof own.instance === "string" &&
      state.instance !== own.instance;
    if (current === id && !otherDaemon) own.seen = true;
    else if (otherDaemon || own.seen) ownEnded(id);
  }
}

// One of this page's sessions has ended: its record after it is asked here, after any of this
// page's that wait already. Another tablet's session ending changes no form.
function ownEnded(id) {
  const own = view.own.get(id);
  if (!own) return;
  view.own.delete(id);
  view.toRecord.push({ id, user: own.user });
}

// Another session than the last one seen, shown as the last until the next. (The record form
// is not the last session's but the first of this page's waiting for theirs: view.toRecord.)
function newLast(last) {
  view.last = last;
}

// Each line begins with the event's name in WORDS.events, and says the rest in words: causes,
// reasons, sensors and programs by their words, never by their codes.
function onEvent(e) {
  const name = eventWords(e.type);
  const title = (program) => (PROGRAMS[program] || {}).title || program;
  switch (e.type) {
    case "session_started":
      view.target = typeof e.target_mph === "number" ? e.target_mph : view.target;
      rememberUser(e.user, e.program);
      // This page's start opened it, once that start is known to be the one accepted
      // (startKnown): the pain asked before it goes on its record.
      if (view.starting && view.starting.user === e.user) {
        view.starting.sessionId = String(e.session_id);
        startKnown();
      }
      log(
        `${name}: session ${e.session_id} for ${e.user}, ${title(e.program)}, cap ${capWords(e.program, e.cap_s)}`,
      );
      break;
    case "countdown":
      view.countdownEnd = performance.now() + 1000 * e.seconds;
      log(`${name}: the belt starts in ${e.seconds} s`);
      break;
    case "belt_started":
      log(`${name}, target ${e.target_mph} mph`);
      break;
    case "speed_step":
      view.target = e.target_mph;
      log(`${name} to ${e.target_mph} mph`);
      break;
    case "outcome_recorded":
      log(`${name}: session ${e.session_id}, pain ${e.when} ${e.pain}/10`);
      break;
    case "measure_recorded":
      log(`${name}: ${e.user}, ${measureWords(e.kind, e.value)}, taken ${e.date}`);
      break;
    case "speed_changed":
      log(`${name}: ${e.from_mph} to ${e.to_mph} mph${e.clinician ? ` (${e.clinician})` : ""}`);
      break;
    case "cap_warning":
      view.capWarned = view.state && view.state.session ? view.state.session.id : null;
      log(`${name}: ${clock(e.remaining_s)} left`);
      break;
    case "stopping":
      log(`${name}: ${reasonWords(e.reason)}`);
      break;
    case "interval_rest":
      log(`${name} after interval ${e.interval} of ${e.intervals}`);
      break;
    case "session_ended":
      view.capWarned = null;
      // A session that ended before this page's start was accepted was another's (a start
      // is accepted only while none runs): the pain waits for the one this start opens.
      const start = view.starting;
      if (start && !start.accepted && start.sessionId === String(e.session_id)) {
        start.sessionId = undefined;
      }
      // One of this page's sessions: its record after it is asked here (if a state has not
      // told the page already). Another tablet's session ending here changes no form.
      ownEnded(String(e.session_id));
      if (!view.last || String(view.last.id) !== String(e.session_id)) {
        newLast({ id: e.session_id, top: null }); // a session this page never saw run
      }
      view.last.reason = e.reason;
      view.last.belt_s = typeof e.belt_moving_s === "number" ? e.belt_moving_s : null;
      log(
        `${name}: session ${e.session_id}, ${reasonWords(e.reason)}; belt time ${clock(e.belt_moving_s)}`,
      );
      break;
    case "estop":
    case "fault":
      log(`${name}: ${causeWords(e.cause)}`, true);
      break;
    case "reset":
      log(`${name}: the stop for ${causeWords(e.cleared)} is cleared`);
      break;
    case "grip_warning":
      log(
        `${name}: ${e.hand} hand ${e.cause === "released" ? "released" : "sensor silent"}`,
        true,
      );
      break;
    case "sensor_stale":
      log(`${name}: ${sensorWords(e.sensor)} has no fresh reading`, true);
      break;
    case "command_refused":
    case "stop_checked":
      // This page shows its own refusals from their replies; every stop's figures are in the
      // journal, and a slow one comes as a maintenance warning.
      break;
    case "belt_found_moving":
      log(`${name} at start-up (${e.speed_mph} mph)`, true);
      break;
    case "maintenance_warning":
      // A stop slower than when the treadmill was commissioned (docs/stop-watch.md).
      log(`${name}: ${e.message}`, true);
      break;
    case "journal_warning":
      log(`${name}: ${e.message}`, true);
      break;
    case "commissioning_expired":
      // No session starts until the treadmill's stops are proven again (docs/commissioning.md).
      log(`${name}: ${e.detail}`, true);
      break;
    default:
      log(name);
  }
}

function onMessage(topic, payload, packet) {
  try {
    takeMessage(topic, payload, packet);
  } catch (err) {
    pageFailed(err);
  }
  render();
}

// A failure of the page's own code (a state of a shape it does not expect): the view can no
// longer be trusted, so the page goes offline and stops its heartbeat, and a session it
// watched ends by SR-12's grace.
function pageFailed(err) {
  if (view.broken === null) log(`Page error: ${err && err.message ? err.message : err}`, true);
  view.broken = String(err && err.message ? err.message : err);
  updateHeartbeat();
}

function takeMessage(topic, payload, packet) {
  const text = new TextDecoder().decode(payload);
  if (topic === TOPIC.availability) {
    if (text !== view.availability) log(`Treadmill ${text}`, text !== "online");
    view.availability = text;
  } else {
    let obj;
    try {
      obj = JSON.parse(text);
    } catch {
      return;
    }
    if (obj === null || typeof obj !== "object") return;
    if ((topic === TOPIC.state || topic === TOPIC.events) && !(packet && packet.retain)) {
      noteDaemonTime(obj.ts, topic === TOPIC.state ? obj.instance : undefined);
    }
    if (topic === queryTopics().answers) onAnswer(obj);
    else if (topic === TOPIC.state) onState(obj);
    else if (topic === TOPIC.reply) onReply(obj);
    else if (topic === TOPIC.events && firstTime(obj.event_id)) onEvent(obj);
  }
}

// ------------------------------------------------------------------ heartbeat (SR-12)

// Only while the page is visible: a hidden or closed page stops it, and the daemon then ends a
// session with a controlled stop after its grace (5 s). A page nobody sees keeps nothing alive.
function updateHeartbeat() {
  // Not while the page's own view is broken, nor while a moving belt's state is out of date:
  // the heartbeat says someone is watching a live view.
  const why = view.broken === null ? offlineWhy() : "broken";
  const watching = why === null || why === "the treadmill does not answer";
  const want =
    document.visibilityState === "visible" && client !== null && client.connected && watching;
  if (want && heartbeat === null) {
    send("heartbeat");
    heartbeat = setInterval(() => send("heartbeat"), HEARTBEAT_MS);
  } else if (!want && heartbeat !== null) {
    clearInterval(heartbeat);
    heartbeat = null;
    view.unansweredSince = null;
  }
}

// ------------------------------------------------------------------ the connection

// A remembered login goes only to the broker the page came from: a link with ?broker= set to
// another address must not collect the tablet account's password.
const OWN_BROKER = new URL(BROKER).host === location.host;

function credentials() {
  const stored = OWN_BROKER
    ? sessionStorage.getItem("treadguard.login") || localStorage.getItem("treadguard.login")
    : null;
  if (stored) {
    try {
      return JSON.parse(stored);
    } catch {
      /* fall through */
    }
  }
  return params.get("user") ? { username: params.get("user"), password: "" } : {};
}

// A persistent MQTT session (SR-14): the broker keeps this tablet's subscriptions and holds the
// QoS 1 events (an emergency stop) published while the tablet is away, and hands them over when
// it is back. The session is found again by the client id, so the id is this device's, the same
// on every load: "?client_id=" names it, else one is made once and kept in localStorage. A second
// tab on the same device (it would take over the first tab's connection, again and again) uses
// an id of its own for as long as the first holds the device's. The broker may replace the id
// by the login's name (use_username_as_clientid): the id is only ever used to find the session.
const SESSION_EXPIRY_S = 3600;
let deviceClientId = null;

function storedClientId() {
  const named = params.get("client_id");
  if (named) return named;
  let id = null;
  try {
    id = localStorage.getItem("treadguard.clientId");
    if (!id) {
      id = "tg-page-" + commandId().slice(5, 17);
      localStorage.setItem("treadguard.clientId", id);
    }
  } catch {
    /* storage refused (a private window): an id for this load only */
  }
  return id || "tg-page-" + commandId().slice(5, 17);
}

// Calls start() with this tab's client id, once: the device's when no other tab holds it.
function withClientId(start) {
  const own = storedClientId();
  if (!(navigator.locks && navigator.locks.request)) {
    start(own);
    return;
  }
  navigator.locks
    .request("treadguard.clientId." + own, { ifAvailable: true }, (lock) => {
      start(lock ? own : "tg-page-" + commandId().slice(5, 17));
      return lock ? new Promise(() => {}) : null; // held for as long as this tab lives
    })
    .catch(() => start(own));
}

function connect() {
  if (deviceClientId === null) {
    withClientId((id) => {
      deviceClientId = id;
      connect();
    });
    return;
  }
  if (typeof mqtt === "undefined") {
    view.link = "nolib";
    render();
    return;
  }
  const login = credentials();
  view.loginTried = Boolean(login.password);
  client = mqtt.connect(BROKER, {
    protocolVersion: 5,
    clientId: deviceClientId,
    clean: false, // resume the session the broker kept for this device
    properties: { sessionExpiryInterval: SESSION_EXPIRY_S },
    keepalive: 5,
    reconnectPeriod: 1000,
    connectTimeout: 5000,
    // Subscribed afresh on every connect, below: a broker restarted without persistence has
    // forgotten the session. QoS 1, so the broker holds events for the session.
    resubscribe: false,
    username: login.username || undefined,
    password: login.password || undefined,
  });
  client.on("connect", () => {
    view.link = "connected";
    view.linkDetail = "";
    log(`Connected to ${BROKER}`);
    client.subscribe(
      [...Object.values(TOPIC).filter((t) => t !== TOPIC.cmd), queryTopics().answers],
      { qos: 1 },
      (err) => {
        // "Watching" once the broker has granted them (the session is saved with them from
        // then on). A refusal (a broker whose ACL checks subscriptions; Mosquitto's acl_file
        // grants and then delivers nothing) or a link lost before the answer is said, not hidden.
        if (err) log(`The broker refused this page's subscriptions (${err.message})`, true);
        else log(`Watching treadmill ${TREADMILL}`);
      },
    );
    for (const type of resendOnConnect.splice(0)) send(type);
    sendHeldPain(true); // the pain before held for the link
    updateHeartbeat();
    render();
  });
  client.on("message", onMessage);
  client.on("close", () => {
    // Drop what was not acknowledged: MQTT.js would resend it after a reconnect, and a start
    // or a speed change must not arrive seconds after the clinician saw it fail.
    for (const mid of Object.keys(client.outgoing || {})) client.removeOutgoingMessage(Number(mid));
    for (const [id, sent] of pending) {
      clearTimeout(sent.timer);
      pending.delete(id);
      startUnanswered(id);
      if (sent.type === "outcome_before") {
        holdPain(
          sent.fields,
          "the link dropped before an answer",
          SENT_AGAIN,
          sentUnder(sent.fields),
        );
      }
      if (["estop", "stop", "commission_abort"].includes(sent.type)) {
        resendOnConnect.push(sent.type);
        log(`${commandWords(sent)}: the link dropped before an answer; sent again on reconnect`, true);
        say(`${commandWords(sent)} may not have arrived: it is sent again when the link is back.`);
      } else {
        log(`${commandWords(sent)}: the link dropped before an answer`, true);
      }
    }
    for (const [id, query] of asked) {
      clearTimeout(query.timer);
      asked.delete(id);
      query.onAnswer({ ok: false, error: { message: "the link dropped before an answer" } });
    }
    view.state = null; // the next state is the daemon's own, after the reconnect
    if (view.link === "connected") log("Broker connection lost", true);
    if (view.link !== "login") view.link = "disconnected";
    view.availability = null; // unknown until the broker hands it over again
    updateHeartbeat();
    render();
  });
  client.on("error", (err) => {
    // 4/5 (MQTT 3.1.1) and 0x86/0x87 (MQTT 5): a wrong or missing login. Retrying will not help.
    if ([4, 5, 134, 135].includes(err.code)) {
      view.link = "login";
      client.end(true);
      // Before anyone typed a password the broker only asks for a login: no error to show.
      askLogin(
        view.loginTried
          ? `The broker refused this account and password (${err.message}): try again.`
          : "The broker asks for a login: the tablet's account and its password.",
      );
    } else {
      view.linkDetail = err.message;
    }
    render();
  });
}

function askLogin(why) {
  $("login-why").textContent = why;
  const login = credentials();
  if (login.username) $("login-user").value = login.username;
  $("login").showModal();
}

$("login-form").addEventListener("submit", () => {
  const login = JSON.stringify({
    username: $("login-user").value,
    password: $("login-password").value,
  });
  sessionStorage.setItem("treadguard.login", login);
  if ($("login-remember").checked) localStorage.setItem("treadguard.login", login);
  else localStorage.removeItem("treadguard.login");
  view.link = "connecting";
  connect();
});

// ------------------------------------------------------------------ the patient view

function ask(type, fields, timeoutMs, onAnswer) {
  if (!client || !client.connected) {
    onAnswer({ ok: false, error: { message: "no connection to the broker" } });
    return;
  }
  if (view.state && view.state.queries && view.state.queries.connected === false) {
    // Said at once: asked now, the question would reach nobody and wait out its time.
    onAnswer({
      ok: false,
      error: {
        message:
          "the treadmill cannot answer record questions right now (its connection for them " +
          "is down); sessions run as ever. Try again in a moment.",
      },
    });
    return;
  }
  const id = commandId();
  const timer = setTimeout(() => {
    asked.delete(id);
    onAnswer({ ok: false, error: { message: `no answer within ${timeoutMs / 1000} s` } });
    render();
  }, timeoutMs);
  asked.set(id, { onAnswer, timer });
  client.publish(queryTopics().ask, JSON.stringify({ id, type, ...fields }), {
    qos: 1,
    retain: false,
  });
}

function onAnswer(answer) {
  const query = asked.get(answer.id);
  if (!query) return; // an answer this page no longer waits for
  clearTimeout(query.timer);
  asked.delete(answer.id);
  query.onAnswer(answer);
}

// An answer of a shape this page does not expect is said in the patient view, never taken for
// a failure of the page (that would stop its heartbeat): the live view does not depend on it.
function unreadable(patient, err) {
  Object.assign(patient, { status: `The answer could not be read (${err.message})`, bad: true });
}

function answerError(answer) {
  const error = answer.error || {};
  return sentence(error.message || error.code || "no reason given");
}

// The user's history, with the proposal and the measures: `then` gets the answer once the view
// has it. Asked when the view opens, and again once a measure is saved (the report is kept).
function askHistory(patient, then) {
  const user = patient.user;
  ask("history", { user, limit: HISTORY_LIMIT }, QUERY_TIMEOUT_MS, (answer) => {
    if (view.patient !== patient) return; // closed, or opened again, meanwhile
    if (!answer.ok) {
      Object.assign(patient, { status: `No history: ${answerError(answer)}`, bad: true });
      return;
    }
    if (!Array.isArray(answer.sessions) || typeof answer.total !== "number") {
      unreadable(patient, new Error("no list of sessions"));
      return;
    }
    patient.history = answer;
    measureToday(patient);
    then(answer);
  });
}

// Today in the clinic's time zone, by the daemon's clock as far as the page can tell (a
// tablet's clock that is off does not matter): "2026-12-04". Null for a zone this browser does
// not know: the date is then left to the treadmill (its today). Asked at every render (the
// day turns while a view is open), so each zone's format is made once.
const dayFormats = new Map();
function clinicToday(zone) {
  try {
    if (!dayFormats.has(zone)) {
      const options = { timeZone: zone, year: "numeric", month: "2-digit", day: "2-digit" };
      dayFormats.set(zone, new Intl.DateTimeFormat("en-CA", options));
    }
    const parts = dayFormats.get(zone).formatToParts(new Date(1000 * daemonNow()));
    const part = (type) => parts.find((p) => p.type === type).value;
    return `${part("year")}-${part("month")}-${part("day")}`;
  } catch {
    return null;
  }
}

// The user the measure's fields were last filled for: what was typed stays while the view is
// closed and opened again for the same user, never for another one.
let measureUser = null;
// Whether the clinician set the measure's day themselves (a measure taken on another day):
// until then the day is today's, whenever the entry is opened and as the day turns.
let measureDayChosen = false;

// The measure's day, today in the clinic's zone: when the history comes, each time the entry
// is opened and at every render, so a view kept open past midnight dates a measure today,
// not yesterday. A day the clinician chose stays; only the latest day allowed moves.
function measureToday(patient) {
  const today = patient.history ? clinicToday(patient.history.timezone) : null;
  if (today === null) return;
  patient.today = today;
  const date = $("measure-date");
  if (date.max !== today) date.max = today;
  if (!measureDayChosen && date.value !== today) date.value = today;
}

function openPatient(user) {
  const patient = {
    user,
    history: null,
    report: null,
    status: "Asking the treadmill…",
    bad: false,
    today: null,
    entering: false,
    measure: null,
    showMeasures: false,
  };
  view.patient = patient;
  document.body.dataset.view = "patient";
  if (measureUser !== user) {
    $("measure-value").value = $("measure-date").value = "";
    measureDayChosen = false;
    measureUser = user;
  }
  patient.entering = $("measure-value").value !== ""; // a value typed and not saved: still there
  askHistory(patient, (answer) => {
    const newest = answer.sessions[0];
    if (!newest) {
      patient.status = `No sessions of ${user} on record yet.`;
      return;
    }
    patient.status = "Asking for the last session's report…";
    ask("session", { session_id: newest.session_id, format: "html" }, REPORT_TIMEOUT_MS, (got) => {
      if (view.patient !== patient) return;
      if (!got.ok) {
        Object.assign(patient, { status: `No report: ${answerError(got)}`, bad: true });
        return;
      }
      if (typeof got.html !== "string" || !got.session) {
        unreadable(patient, new Error("no report page"));
        return;
      }
      patient.report = got;
      patient.status = "";
    });
  });
  render();
}

function closePatient() {
  view.patient = null;
  delete document.body.dataset.view;
  const chart = window.Chart && Chart.getChart($("patient-trend"));
  if (chart) chart.destroy();
  $("patient-history").tBodies[0].replaceChildren();
  $("measures-table").tBodies[0].replaceChildren();
  $("patient-report").removeAttribute("srcdoc");
  drawn.history = drawn.report = null;
}

// What is drawn of the patient now: the chart, the table and the report are drawn once per
// answer, not at every render (every 250 ms).
const drawn = { history: null, report: null };

function drawPatient() {
  const patient = view.patient;
  $("patient").hidden = !patient;
  if (!patient) return;
  const history = patient.history;
  const total = history ? history.total : null;
  $("patient-title").textContent =
    total === null
      ? `User ${patient.user}`
      : `User ${patient.user}: ${total} session${total === 1 ? "" : "s"}` +
        (total > history.sessions.length ? ` (the last ${history.sessions.length} shown)` : "");
  $("patient-status").textContent = patient.status;
  $("patient-status").classList.toggle("bad", patient.bad);
  // The treadmill's proposal for the next session and its reason: advice, the clinician
  // decides (the start's program and cap are the setup's, as always).
  const proposal = history && history.proposal;
  $("patient-proposal").hidden = !proposal;
  // None to give now (the daemon's configuration cannot be read, say): why, in its words.
  const none = history && !proposal ? String(history.proposal_unavailable || "") : "";
  $("proposal-none").hidden = !none;
  $("proposal-none").textContent = none ? `No proposal now: ${none}.` : "";
  if (history && !proposal) view.shownStart = null; // nothing shown to hold a start to
  if (proposal) {
    // The reason names the program and its cap ("Reverse walking, 5 min: first session
    // completed 2026-12-01"); below it, how often and which week.
    $("proposal-reason").textContent = sentence(String(proposal.reason || ""));
    const rhythm = [];
    if (Array.isArray(proposal.sessions_a_week)) {
      rhythm.push(`${proposal.sessions_a_week.join("-")} sessions a week`);
    }
    if (proposal.week) rhythm.push(`week ${proposal.week} on the treadmill`);
    if (proposal.note) rhythm.push(String(proposal.note));
    $("proposal-rhythm").textContent = sentence(rhythm.join("; "));
    $("patient-proposal").classList.toggle("held", Boolean(proposal.held));
    // What one tap of From history starts, where it is less than the proposal (the phase the
    // user has reached, for one back after weeks away): the proposal itself is started by
    // naming its program.
    const start = proposal.from_history;
    // Sent with a start from history for this user: a start that would now be other than
    // this (their record changed since) is refused rather than started unseen.
    view.shownStart = start
      ? { user: patient.user, program: start.program, cap_s: start.cap_s }
      : null;
    const less =
      Boolean(start) && (start.program !== proposal.program || start.cap_s !== proposal.cap_s);
    $("proposal-start").hidden = !less;
    $("proposal-start").textContent = less
      ? `From history starts ${start.program_title || start.program}, ` +
        `${capWords(start.program, start.cap_s)}; choose ` +
        `${proposal.program_title || proposal.program} with a cap of ` +
        `${capWords(proposal.program, proposal.cap_s)} to start the proposal.`
      : "";
  }
  if (history && drawn.history !== history) {
    drawn.history = history;
    try {
      drawMeasures(history.measures);
      drawHistory(history.sessions);
    } catch (err) {
      unreadable(patient, err);
    }
  }
  $("patient-measures").hidden = !(history && $("measures-table").tBodies[0].rows.length);
  measureToday(patient);
  drawMeasureForm(patient);
  if (patient.showMeasures && history && !$("patient-measures").hidden) {
    // A measure was saved: the view scrolls to the measures, which have it now.
    patient.showMeasures = false;
    const body = $("patient-body");
    const top = $("patient-measures").getBoundingClientRect().top;
    body.scrollTop += top - body.getBoundingClientRect().top;
  }
  const report = patient.report;
  $("patient-report-title").hidden = $("patient-report").hidden = !report;
  if (report && drawn.report !== report) {
    drawn.report = report;
    const id = report.session.session_id;
    $("patient-report-title").textContent = `Last session's report: session ${id}`;
    $("patient-report").srcdoc = report.html; // sandboxed: the page's own markup, no script
  }
}

// The user's measures, a row a kind, as the patient's report shows them: the baseline (the
// first taken), the latest and the change, in the treadmill's words. An answer without them
// (an older treadmill) shows none.
function drawMeasures(measures) {
  const rows = (Array.isArray(measures) ? measures : []).map((m) => {
    const tr = document.createElement("tr");
    tr.replaceChildren(
      ...[m.title, m.baseline, m.latest, m.change].map((text) =>
        Object.assign(document.createElement("td"), { textContent: String(text) }),
      ),
    );
    return tr;
  });
  $("measures-table").tBodies[0].replaceChildren(...rows);
}

function painWords(row) {
  const before = row.pain_before === null ? "–" : row.pain_before;
  const after = row.pain_after === null ? "–" : row.pain_after;
  return row.pain_before === null && row.pain_after === null ? "–" : `${before} → ${after}`;
}

// A history row's start in the clinic's time: "2026-12-01 14:05". A time the daemon cannot
// put on a calendar (a wall clock stepped past the year 9999) comes as words ("unix time
// 253402300800, outside the calendar"), shown whole rather than cut as a date.
const ISO_TIME = /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}/;

function startedWords(started) {
  return ISO_TIME.test(started) ? started.slice(0, 16).replace("T", " ") : started;
}

function startedDay(started) {
  return ISO_TIME.test(started) ? started.slice(5, 10) : "no date";
}

function drawHistory(sessions) {
  const rows = sessions.map((row) => {
    const tr = document.createElement("tr");
    if (["estop", "fault"].includes(row.ended_by)) tr.className = "stop";
    const cells = [
      `${row.session_id}, ${startedWords(row.started)}`, // the clinic's time
      row.program_title,
      row.belt_min === null ? "–" : `${row.belt_min} of ${row.cap_min} min`,
      row.top_mph === null ? "–" : `${row.top_mph.toFixed(2)} mph`,
      painWords(row),
      sentence(row.ended_by_words),
    ];
    tr.replaceChildren(
      ...cells.map((text) => Object.assign(document.createElement("td"), { textContent: text })),
    );
    return tr;
  });
  $("patient-history").tBodies[0].replaceChildren(...rows);
  drawTrend([...sessions].reverse()); // oldest first, as time runs
}

// The trend with Chart.js (node_modules/chart.js): belt minutes as bars (red: ended by an
// emergency stop or a fault), the pain before and after on the same 0-10 scale, the top speed
// on its own axis.
function drawTrend(sessions) {
  const canvas = $("patient-trend");
  const old = window.Chart && Chart.getChart(canvas);
  if (old) old.destroy();
  if (typeof Chart === "undefined") {
    view.patient.status = "The chart library is missing (run npm ci in tablet/).";
    view.patient.bad = true;
    return;
  }
  const text = "#d8dee6";
  const grid = "#334255";
  const axis = (title, extra) => ({
    min: 0,
    title: { display: true, text: title, color: text },
    ticks: { color: text },
    grid: { color: grid },
    ...extra,
  });
  new Chart(canvas, {
    data: {
      labels: sessions.map((s) => `${s.session_id}: ${startedDay(s.started)}`),
      datasets: [
        {
          type: "bar",
          label: "Belt minutes",
          data: sessions.map((s) => s.belt_min),
          backgroundColor: sessions.map((s) =>
            ["estop", "fault"].includes(s.ended_by) ? "#ff3b30" : "#1e88e5",
          ),
          yAxisID: "y",
          order: 2,
        },
        {
          type: "line",
          label: "Pain before",
          data: sessions.map((s) => s.pain_before),
          borderColor: "#ffb300",
          backgroundColor: "#ffb300",
          borderDash: [6, 4],
          spanGaps: true,
          yAxisID: "y",
          order: 1,
        },
        {
          type: "line",
          label: "Pain after",
          data: sessions.map((s) => s.pain_after),
          borderColor: "#ff8a80",
          backgroundColor: "#ff8a80",
          spanGaps: true,
          yAxisID: "y",
          order: 1,
        },
        {
          type: "line",
          label: "Top speed, mph",
          data: sessions.map((s) => s.top_mph),
          borderColor: "#2ecc71",
          backgroundColor: "#2ecc71",
          spanGaps: true,
          yAxisID: "speed",
          order: 0,
        },
      ],
    },
    options: {
      animation: false,
      responsive: true,
      maintainAspectRatio: false,
      plugins: { legend: { labels: { color: text, boxWidth: 14 } } },
      scales: {
        x: { ticks: { color: text }, grid: { color: grid } },
        y: axis("minutes; pain 0-10", { suggestedMax: 10 }),
        speed: axis("mph", {
          position: "right",
          suggestedMax: 1.4,
          grid: { drawOnChartArea: false },
        }),
      },
    },
  });
}

$("patient-open").addEventListener("click", () => {
  const user = typedUser();
  if (!$("patient-open").disabled && user) openPatient(user);
});
$("patient-close").addEventListener("click", () => {
  closePatient();
  render();
});

// ------------------------------------------------------------------ a measure of the patient

// The measures a clinician enters, with their titles, units and ranges: words.js's copy of
// contract/measures.py, so the page checks a value against the range the treadmill checks it
// against, and a measure a newer treadmill adds appears with a new words.js.
const MEASURES = WORDS.measures || {}; // none in a words.js older than this page: none offered

function measureWords(kind, value) {
  const m = MEASURES[kind];
  if (!m) return `${kind} ${value}`;
  return `${m.title} ${measureFigures(m, value)}${m.unit ? ` ${m.unit}` : ""}`;
}

// A measure's number as the treadmill's reports and its history answer show it
// (contract/measures.py): to the kind's resolution, trailing zeros dropped, a time with one
// decimal at least: "12.0", "11.96", "64.3", "62". As it is with a words.js without places.
function measureFigures(m, value) {
  if (typeof m.places !== "number" || typeof value !== "number") return String(value);
  const [whole, decimals = ""] = value.toFixed(m.places).split(".");
  const kept = decimals.replace(/0+$/, "").padEnd(m.unit ? 1 : 0, "0");
  return kept ? `${whole}.${kept}` : whole;
}

// Whether a value is a whole number of the kind's steps (words.js's places: 12.34 s, a score
// of 64.3 or of 31), as the treadmill checks it: a finer one is refused, never rounded.
function measureAtResolution(m, value) {
  return typeof m.places !== "number" || Number(value.toFixed(m.places)) === value;
}

// The number typed ("12.5", or "12,5" as a comma-decimal keyboard gives it), or null.
function measureNumber(typed) {
  const text = typed.trim().replace(",", ".");
  return /^[+-]?(\d+\.?\d*|\.\d+)$/.test(text) ? Number(text) : null;
}

function measureOpen(user) {
  return Boolean(view.patient && view.patient.user === user);
}

function drawMeasureForm(patient) {
  $("measure-open").hidden = patient.entering;
  $("measure").hidden = !patient.entering;
  const m = MEASURES[$("measure-kind").value];
  $("measure-range").textContent = m ? `Value, ${m.range}` : "Value";
  $("measure-save").disabled = pendingOf("record_measure");
  const said = patient.measure;
  $("measure-status").textContent = said ? said.text : "";
  $("measure-status").classList.toggle("bad", Boolean(said && said.bad));
}

// What is wrong with the measure as typed, in words, and the field to correct; null if
// nothing is. What is typed is never cleared: the clinician corrects it.
function measureProblem(m, typed, date, today) {
  const value = measureNumber(typed);
  if (typed.trim() === "") return ["measure-value", `Not saved: type the ${m.title} (${m.range}).`];
  if (value === null) {
    return [
      "measure-value",
      `Not saved: "${typed.trim()}" is not a number. Type the ${m.title} in figures (${m.range}).`,
    ];
  }
  if (!(value >= m.lowest && value <= m.highest)) {
    return ["measure-value", `Not saved: a ${m.title} is ${m.range}, not ${typed.trim()}.`];
  }
  if (!measureAtResolution(m, value)) {
    return [
      "measure-value",
      `Not saved: a ${m.title} is ${m.range} in ${m.steps}, not ${typed.trim()}.`,
    ];
  }
  if (date.validity.badInput) {
    return ["measure-date", "Not saved: the date is not a whole day. Finish it, or clear it."];
  }
  if (today !== null && date.value > today) {
    return [
      "measure-date",
      `Not saved: ${date.value} is after today (${today}). A measure is recorded once taken.`,
    ];
  }
  return null;
}

// Accepted: said beside the form, the value cleared (if it is still the one sent) for the
// next, and the view asked again, so it shows the measure among the user's.
function measureSaved(fields) {
  if (!measureOpen(fields.user)) return; // the view closed, or moved on, meanwhile
  const patient = view.patient;
  const day = fields.date || patient.today || "today";
  patient.measure = { text: `Saved: ${measureWords(fields.kind, fields.value)}, taken ${day}.` };
  if (measureNumber($("measure-value").value) === fields.value) $("measure-value").value = "";
  askHistory(patient, () => {
    patient.showMeasures = true;
  });
}

$("measure-open").addEventListener("click", () => {
  if (!view.patient) return;
  view.patient.entering = true;
  measureToday(view.patient);
  render();
});
$("measure-close").addEventListener("click", () => {
  if (!view.patient) return;
  Object.assign(view.patient, { entering: false, measure: null }); // what was typed stays
  render();
});
$("measure-kind").replaceChildren(
  ...Object.entries(MEASURES).map(([kind, m]) => new Option(m.title, kind)),
);
$("measure").addEventListener("submit", (event) => {
  event.preventDefault();
  const patient = view.patient;
  if ($("measure-save").disabled || !patient || offlineWhy() !== null) return;
  const kind = $("measure-kind").value;
  if (!MEASURES[kind]) return; // nothing to choose from
  const typed = $("measure-value").value;
  const date = $("measure-date");
  const problem = measureProblem(MEASURES[kind], typed, date, patient.today);
  const clinician = clinicianProblem();
  if (!problem && clinician !== null) {
    // What was typed stays; the Clinician field is above the setup's User (Back).
    patient.measure = {
      text:
        `Not saved: the Clinician code is not valid (${clinician}). ` +
        "Press Back, correct it above User, then Save.",
      bad: true,
    };
    render();
    return;
  }
  if (problem) {
    patient.measure = { text: problem[1], bad: true };
    $(problem[0]).focus();
    render();
    return;
  }
  const fields = { user: patient.user, kind, value: measureNumber(typed) };
  if (date.value) fields.date = date.value; // none: today, in the treadmill's own calendar
  patient.measure = null;
  send("record_measure", fields);
});
// Typed or picked by the clinician (never by the page, whose setting of the value is no input).
$("measure-date").addEventListener("input", () => {
  measureDayChosen = true;
});
// What the page said of the last try goes once the clinician corrects it.
for (const id of ["measure-kind", "measure-value", "measure-date"]) {
  $(id).addEventListener("input", () => {
    if (view.patient) view.patient.measure = null;
    render();
  });
}

// ------------------------------------------------------------------ the setup form

function knownUsers() {
  try {
    return JSON.parse(localStorage.getItem("treadguard.users") || "{}");
  } catch {
    return {};
  }
}

// The users offered as one types, most recent last: only the last few, since a clinic's tablet
// is shared and these are patients' names or codes.
const USERS_KEPT = 20;

function rememberUser(user, program) {
  const users = knownUsers();
  delete users[user];
  users[user] = program;
  const names = Object.keys(users);
  for (const old of names.slice(0, Math.max(0, names.length - USERS_KEPT))) delete users[old];
  localStorage.setItem("treadguard.users", JSON.stringify(users));
  fillUsers();
}

function fillUsers() {
  $("users").replaceChildren(
    ...Object.keys(knownUsers()).map((u) =>
      Object.assign(document.createElement("option"), { value: u }),
    ),
  );
}

function fillPrograms() {
  const user = typedUser();
  const last = knownUsers()[user];
  // "From history": the program is left out and the daemon picks it from its journal: a
  // first session for a user it has none of, after that the session the plan proposes (the
  // patient view's proposal, holds included). The last one seen here is only a hint.
  const title = (name) => (PROGRAMS[name] || {}).title || name;
  const rule = programChoice.default
    ? `From history: ${title(programChoice.default)} for a first session, ` +
      "after that the proposed session, in the phase the patient has reached."
    : "";
  $("program-hint").textContent = last ? `Last time on this tablet: ${title(last)}. ${rule}` : rule;
  const chosen = $("program").value;
  $("program").replaceChildren(
    new Option("From history", ""),
    ...Object.entries(PROGRAMS).map(([name, p]) => new Option(p.title, name)),
  );
  $("program").value = chosen;
  fillCaps();
}

function fillCaps() {
  const program = $("program").value;
  const chosen = $("cap").value;
  const caps = program ? PROGRAMS[program].caps : [];
  $("cap").replaceChildren(
    new Option("Default", ""),
    ...caps.map((cap) => new Option(capWords(program, cap), String(cap))),
  );
  $("cap").value = caps.map(String).includes(chosen) ? chosen : "";
}

$("user").addEventListener("input", () => {
  fillPrograms();
  render();
});
$("program").addEventListener("change", fillCaps);
$("clinician").value = localStorage.getItem("treadguard.clinician") || "";
// A code kept by an older page may be one the treadmill refuses: shown with what is wrong
// (render), and no longer kept.
if (clinicianProblem() !== null) localStorage.removeItem("treadguard.clinician");
$("clinician").addEventListener("input", render); // what is wrong, said as it is typed
// Kept once entered, if the treadmill would take it: a bad one is never kept (and the one kept
// before goes, so that the next page opened does not enter the record under another's code).
// A pain before held for the code goes with the code entered.
$("clinician").addEventListener("change", () => {
  if (typedClinician() && clinicianProblem() === null) {
    localStorage.setItem("treadguard.clinician", typedClinician());
  } else {
    localStorage.removeItem("treadguard.clinician");
  }
  // (What the page said of a Save stays until the next: the change comes as the field is left,
  // often by the tap on Save itself, which must not see the form move under it.)
  if (clinicianProblem() === null && offlineWhy() === null) sendHeldPain();
  render();
});
$("setup").addEventListener("submit", (event) => {
  event.preventDefault();
  if ($("start").disabled || offlineWhy() !== null) return; // Enter in a field, a double tap
  const fields = { user: typedUser() };
  if ($("program").value) fields.program = $("program").value;
  if ($("cap").value) fields.cap_s = Number($("cap").value);
  const shown = view.shownStart;
  if (!fields.program && shown && shown.user === fields.user) {
    fields.shown = { program: shown.program, cap_s: shown.cap_s };
  }
  const pain = $("pain-before").value;
  // Never held back by the record: a clinician's code the treadmill would refuse holds back
  // only the pain, which waits for the code to be corrected (painGoesOn).
  const startId = send("start_session", fields);
  view.starting =
    startId === undefined
      ? null
      : {
          user: fields.user,
          pain: pain === "" ? null : Number(pain),
          startId,
          // The code the pain is entered under, if the treadmill would take it (painGoesOn).
          clinician: clinicianProblem() === null ? typedClinician() : null,
        };
});
// After a session: the pain now, the exertion and notes, for the session's record (never
// needed for the belt: the daemon journals them, the safety core never sees them).
function scores(id, none) {
  $(id).replaceChildren(
    new Option(none, ""),
    ...Array.from({ length: 11 }, (_, n) => new Option(String(n), String(n))),
  );
}
scores("pain-before", "not asked");
scores("pain-after", "choose");
scores("exertion", "not asked");
$("pain-after").addEventListener("change", render);
$("record").addEventListener("submit", (event) => {
  event.preventDefault();
  const waiting = view.toRecord.length ? view.toRecord[0] : null;
  if ($("record-save").disabled || !waiting || offlineWhy() !== null) return;
  if (view.formFor !== waiting.id) return; // drawn for another: the next drawing clears it
  const problem = clinicianProblem();
  if (problem !== null) {
    view.recordSaid = {
      text: `Not saved: the Clinician code is not valid (${problem}). Correct it above, then Save.`,
      bad: true,
    };
    $("clinician").focus();
    render();
    return;
  }
  view.recordSaid = null;
  // The user named too: the treadmill refuses an entry whose session is another user's.
  const fields = {
    session_id: waiting.id,
    user: waiting.user,
    pain: Number($("pain-after").value),
  };
  if ($("exertion").value !== "") fields.exertion = Number($("exertion").value);
  const notes = $("record-notes").value.trim();
  if (notes) fields.notes = notes;
  send("outcome_after", fields);
});
$("record-later").addEventListener("click", () => {
  // Not asked again for this session; the next of this page's that waits, if any, is asked.
  if (!$("record-later").disabled) view.toRecord.shift();
  render();
});
// Each handler looks again: the view is redrawn every 250 ms, a tap can come in between.
function whenLive(id, action) {
  $(id).addEventListener("click", () => {
    if (!$(id).disabled && offlineWhy() === null) action();
  });
}
whenLive("slower", () => send("set_speed", { mph: round1(view.target - STEP_MPH) }));
whenLive("faster", () => send("set_speed", { mph: round1(view.target + STEP_MPH) }));
$("stop").addEventListener("click", () => {
  if (!$("stop").disabled) send("stop"); // a stop is never held back by a stale view
});
whenLive("reset", () => send("reset"));
// A confirmation names the request it answers, as shown when tapped: should the run have
// moved on meanwhile, the treadmill refuses it rather than take it for the next request.
whenLive("comm-confirm", () => {
  const run = commissioningRun(view.state);
  if (run && run.waiting === "technician") {
    send("commission_confirm", { step: run.step, ask: run.ask });
  }
});
$("comm-abort").addEventListener("click", () => {
  if (!$("comm-abort").disabled) send("commission_abort"); // never held back by a stale view
});
// pointerdown, not click: an E-STOP acts on the touch, not on the finger lifting.
function estop() {
  if (!$("estop").disabled) send("estop");
}
$("estop").addEventListener("pointerdown", estop);
$("estop").addEventListener("keydown", (event) => {
  if (event.key === "Enter" || event.key === " ") estop();
});

document.addEventListener("visibilitychange", updateHeartbeat);
// Back from the browser's back/forward cache: the link was ended on pagehide, start afresh.
window.addEventListener("pageshow", (event) => {
  if (event.persisted) location.reload();
});
window.addEventListener("pagehide", () => {
  if (heartbeat !== null) clearInterval(heartbeat);
  heartbeat = null;
  if (client) client.end(true);
});

// The countdown and the staleness checks move with time, not only with messages.
setInterval(render, 250);
fillUsers();
fillPrograms();
connect();
render();
