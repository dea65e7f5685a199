// The midonet-membership console: plain browser JavaScript, no build step, no CDN.
// It only calls the API (with the token the operator typed or Keystone issued, kept in this
// tab's sessionStorage) and polls it every second, so a change shows within about a second.
"use strict";

const POLL_MS = 1000;
const state = {token: sessionStorage.getItem("midonet-token"), timer: null, busy: false,
               rows: new Map(), agents: []};
const $ = (id) => document.getElementById(id);

// -- the API --------------------------------------------------------------------------------
class ApiError extends Error {
  constructor(status, message) { super(message); this.status = status; }
}

async function api(method, path, body) {
  const headers = {"Accept": "application/json", "X-Auth-Token": state.token || ""};
  if (body !== undefined) headers["Content-Type"] = "application/json";
  const resp = await fetch(path, {method, headers,
                                  body: body === undefined ? undefined : JSON.stringify(body)});
  const text = await resp.text();
  let data = null;
  try { data = text ? JSON.parse(text) : null; } catch (e) { data = null; }
  if (!resp.ok) {
    // Errors are shown as the API words them (Neutron's NeutronError body).
    const message = data && data.NeutronError ? data.NeutronError.message
                                              : `${resp.status} ${resp.statusText}`;
    throw new ApiError(resp.status, message);
  }
  return data;
}

// Every page of a list: with neutron.conf's pagination_max_limit the server caps each
// answer and links the next page, which is followed on this origin.
async function listAll(path, collection) {
  const items = [];
  for (let next = path; next;) {
    const page = await api("GET", next);
    items.push(...page[collection]);
    const link = (page[`${collection}_links`] || []).find((l) => l.rel === "next");
    const url = link && page[collection].length ? new URL(link.href, location.href) : null;
    const following = url && url.pathname + url.search;
    next = following !== next ? following : null;  // a link that never advances ends it
  }
  return items;
}

// -- login ----------------------------------------------------------------------------------
async function showLogin(message) {
  stopPolling();
  state.token = null;
  sessionStorage.removeItem("midonet-token");
  $("app").hidden = true;
  $("logout").hidden = true;
  $("whoami").hidden = true;
  $("login-panel").hidden = false;
  $("login-error").textContent = message || "";
  const config = await (await fetch("/console/config.json")).json();
  $("login-token").hidden = config.auth_strategy === "keystone";
  $("login-keystone").hidden = config.auth_strategy !== "keystone";
}

async function start(token, who) {
  state.token = token;
  let problem = "";
  try {
    // Only a 401 means a wrong token. The memberships live in the database, so this works
    // while the NSDB is down, when an operator may well need the console.
    await api("GET", "/v2.0/agent-memberships?limit=1&fields=id");
  } catch (e) {
    if (e.status === 401) {
      await showLogin(e.message);
      return;
    }
    problem = e.message;
  }
  sessionStorage.setItem("midonet-token", token);
  $("login-panel").hidden = true;
  $("app").hidden = false;
  $("logout").hidden = false;
  $("whoami").hidden = !who;
  $("whoami").textContent = who ? `Logged in as ${who}` : "";
  $("error").textContent = problem;
  await refresh();
  state.timer = setInterval(refresh, POLL_MS);
}

function stopPolling() {
  if (state.timer) clearInterval(state.timer);
  state.timer = null;
}

$("login-token").addEventListener("submit", (ev) => {
  ev.preventDefault();
  start($("token").value.trim(), "admin (token)");
});

$("login-keystone").addEventListener("submit", async (ev) => {
  ev.preventDefault();
  $("login-error").textContent = "";
  const form = new FormData(ev.target);
  try {
    const got = await api("POST", "/console/keystone-token", Object.fromEntries(form));
    await start(got.token, `${form.get("username")} (${got.roles.join(", ") || "no roles"})`);
  } catch (e) {
    $("login-error").textContent = e.message;
  }
});

$("logout").addEventListener("click", () => showLogin(""));

// -- polling --------------------------------------------------------------------------------
async function refresh() {
  if (state.busy) return;
  state.busy = true;
  try {
    const [agents, status] = await Promise.allSettled([
      listAll("/v2.0/agents", "agents"), api("GET", "/v2.0/deployment-status")]);
    for (const r of [agents, status]) {
      if (r.status === "rejected" && r.reason.status === 401) {
        await showLogin(r.reason.message);
        return;
      }
    }
    const failed = [agents, status].filter((r) => r.status === "rejected");
    $("error").textContent = failed.map((r) => r.reason.message).join(" ");
    if (agents.status === "fulfilled") renderAgents(agents.value);
    renderStatus(status.status === "fulfilled" ? status.value.deployment_status : null);
  } finally {
    state.busy = false;
  }
}

// -- the agents table -----------------------------------------------------------------------
function observed(agent, name) {
  // The agent's own report (data plane issue): top-level fields, or an "observed" object.
  if (agent[name] !== undefined && agent[name] !== null) return agent[name];
  if (agent.observed && agent.observed[name] !== undefined) return agent.observed[name];
  return null;
}

function reportedAddresses(agent) {
  const out = [];
  for (const i of (agent.configurations && agent.configurations.interfaces) || []) {
    for (const ip of i.ip_addresses || []) out.push({ip, name: i.name});
  }
  return out;
}

function agentState(agent) {
  return observed(agent, "state") || observed(agent, "agent_state");
}

function renderAgents(agents) {
  // Pending hosts first (not members), then by host name.
  agents.sort((a, b) => (a.member - b.member) || String(a.host).localeCompare(String(b.host)));
  state.agents = agents;
  const pending = agents.filter((a) => !a.member).length;
  $("agents-summary").textContent =
    `${agents.length} agent(s), ${pending} pending activation.`;
  const body = document.querySelector("#agents tbody");
  const seen = new Set();
  agents.forEach((agent, index) => {
    seen.add(agent.id);
    const signature = JSON.stringify(agent);
    let entry = state.rows.get(agent.id);
    if (!entry) {
      entry = {row: document.createElement("tr"), signature: null};
      entry.row.dataset.agentId = agent.id;
      state.rows.set(agent.id, entry);
    }
    if (entry.signature !== signature) {
      fillAgentRow(entry.row, agent);
      entry.signature = signature;
    }
    if (body.children[index] !== entry.row) body.insertBefore(entry.row, body.children[index] || null);
  });
  for (const [id, entry] of state.rows) {
    if (!seen.has(id)) { entry.row.remove(); state.rows.delete(id); }
  }
  if (!agents.length) {
    body.innerHTML = `<tr><td colspan="10">No agents to show.</td></tr>`;
    state.rows.clear();
  } else if (body.querySelector("td[colspan]")) {
    body.querySelector("td[colspan]").parentElement.remove();
  }
}

function cell(row, text, cls) {
  const td = document.createElement("td");
  td.textContent = text === null || text === undefined ? "—" : String(text);
  if (cls) td.className = cls;
  row.appendChild(td);
  return td;
}

function fillAgentRow(row, agent) {
  row.replaceChildren();
  const th = document.createElement("th");
  th.scope = "row";
  th.textContent = agent.host;
  row.appendChild(th);
  cell(row, agent.id, "mono");
  cell(row, reportedAddresses(agent).map((a) => `${a.ip} (${a.name})`).join(", ") || "none");
  cell(row, agent.alive ? "yes" : "no", agent.alive ? "ok" : "bad");
  cell(row, agent.member ? `yes, ${agent.tunnel_ip_address}` : "no");
  const st = agentState(agent);
  const reason = observed(agent, "state_reason") || observed(agent, "reason");
  cell(row, st ? (reason ? `${st}: ${reason}` : st) : null, st ? `state-${st}` : "");
  cell(row, observed(agent, "tunnels"));
  cell(row, observed(agent, "admission_drops"));
  cell(row, agent.heartbeat_timestamp);
  const td = cell(row, "");
  const button = document.createElement("button");
  button.type = "button";
  const label = agent.member ? "Deactivate" : "Activate";
  button.append(label);
  const hidden = document.createElement("span");
  hidden.className = "visually-hidden";
  hidden.textContent = ` ${agent.host}`;
  button.append(hidden);
  button.addEventListener("click", () => (agent.member ? askDeactivate : askActivate)(agent.id));
  td.replaceChildren(button);
}

// -- activate -------------------------------------------------------------------------------
function findAgent(id) { return state.agents.find((a) => a.id === id); }

function askActivate(id) {
  const agent = findAgent(id);
  const dialog = $("activate-dialog");
  dialog.dataset.agentId = id;
  $("activate-host").textContent = `${agent.host} (${agent.id})`;
  $("activate-error").textContent = "";
  const fieldset = $("activate-addresses");
  fieldset.replaceChildren(Object.assign(document.createElement("legend"),
                                         {textContent: "Tunnel IP address"}));
  const choices = reportedAddresses(agent);
  choices.forEach((choice, i) => {
    const input = Object.assign(document.createElement("input"),
      {type: "radio", name: "ip", value: choice.ip, id: `ip-${i}`, checked: i === 0});
    const label = Object.assign(document.createElement("label"),
      {htmlFor: input.id, textContent: `${choice.ip} (${choice.name})`});
    const div = document.createElement("div");
    div.append(input, label);
    fieldset.append(div);
  });
  const other = Object.assign(document.createElement("input"),
    {type: "radio", name: "ip", value: "", id: "ip-other", checked: !choices.length});
  const otherLabel = Object.assign(document.createElement("label"),
    {htmlFor: "ip-other", textContent: "Another address:"});
  const typed = Object.assign(document.createElement("input"),
    {type: "text", id: "ip-typed", name: "typed", inputMode: "decimal"});
  const typedLabel = Object.assign(document.createElement("label"),
    {htmlFor: "ip-typed", textContent: "Other tunnel IP address",
     className: "visually-hidden"});
  typed.addEventListener("input", () => { other.checked = true; });
  const div = document.createElement("div");
  div.append(other, otherLabel, typedLabel, typed);
  fieldset.append(div);
  dialog.showModal();
}

// The "<name>-dialog" submits to ``request(dialog)``, then closes and refreshes the table; the
// API's refusal stays in the dialog ("<name>-error"). "<name>-cancel" closes it.
function onDialogSubmit(name, request) {
  const dialog = $(`${name}-dialog`);
  $(`${name}-form`).addEventListener("submit", async (ev) => {
    ev.preventDefault();
    try {
      await request(dialog);
      dialog.close();
      await refresh();
    } catch (e) {
      $(`${name}-error`).textContent = e.message;
    }
  });
  $(`${name}-cancel`).addEventListener("click", () => dialog.close());
}

onDialogSubmit("activate", (dialog) => {
  const chosen = dialog.querySelector("input[name=ip]:checked");
  const ip = chosen && chosen.value ? chosen.value : $("ip-typed").value.trim();
  return api("POST", "/v2.0/agent-memberships",
             {agent_membership: {id: dialog.dataset.agentId, ip_address: ip}});
});

// -- deactivate -----------------------------------------------------------------------------
function askDeactivate(id) {
  const agent = findAgent(id);
  const dialog = $("deactivate-dialog");
  dialog.dataset.agentId = id;
  $("deactivate-host").textContent =
    `${agent.host} (${agent.id}), tunnel IP ${agent.tunnel_ip_address}`;
  $("deactivate-error").textContent = "";
  dialog.showModal();
}

onDialogSubmit("deactivate", (dialog) =>
  api("DELETE", `/v2.0/agent-memberships/${dialog.dataset.agentId}`));

// -- zone and journal -----------------------------------------------------------------------
function renderStatus(status) {
  const zone = status && status.tunnel_zone;
  const importer = status && status.importer;
  $("zone-type").textContent = zone ? zone.type : (status ? "no zone yet" : "—");
  $("zone-members").textContent = zone ? String(zone.members) : "—";
  $("zone-lag").textContent = importer
    ? `${importer.lag_tasks} task(s), ${importer.lag_seconds.toFixed(0)} s behind` +
      (importer.holding ? ` (new ones wait: ${importer.open_gaps} id gaps not yet known ` +
        "final, as while a Galera node is out; see the importer's log)" : "")
    : "—";
  $("zone-failed").textContent = importer ? String(importer.failed_tasks) : "—";
  const body = document.querySelector("#changes tbody");
  const rows = (status ? status.recent_tasks : []).map((t) => {
    const tr = document.createElement("tr");
    cell(tr, t.id);
    cell(tr, t.created_at);
    cell(tr, `${t.type} ${t.data_type}`);
    cell(tr, t.data_type === "CONFIG" ? null : t.resource_id, "mono");
    cell(tr, t.ip_address || t.tunnel_protocol);
    cell(tr, t.requested_by
      ? (t.requested_from ? `${t.requested_by} from ${t.requested_from}` : t.requested_by)
      : null);
    cell(tr, t.processed ? "yes" : "not yet");
    return tr;
  });
  const signature = JSON.stringify(status && status.recent_tasks);
  if (body.dataset.signature !== signature) {
    body.replaceChildren(...rows);
    body.dataset.signature = signature;
  }
}

// -- start ----------------------------------------------------------------------------------
if (state.token) start(state.token, "admin"); else showLogin("");
