// hookrelay inspector: a page over the admin API. Every value from a sender (job IDs, bodies,
// answers) is put in the page as text (textContent, never HTML), and the admin token travels as a
// bearer header from session storage, never as a cookie, so no other site can act with it.
"use strict";
(() => {
  const TOKEN_KEY = "hookrelay-admin-token";
  const REFRESH_MS = 3000;
  const main = document.getElementById("main");
  let timer = null;

  // el builds an element; children that are not nodes become text nodes.
  function el(tag, attrs, ...kids) {
    const e = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") e.className = v;
      else if (k.startsWith("on")) e.addEventListener(k.slice(2), v);
      else e.setAttribute(k, v);
    }
    for (const kid of kids.flat()) {
      if (kid === undefined || kid === null) continue;
      e.append(kid instanceof Node ? kid : document.createTextNode(String(kid)));
    }
    return e;
  }

  function template(id) {
    return document.getElementById(id).content.cloneNode(true);
  }

  function showError(msg) {
    const box = document.getElementById("error");
    box.textContent = msg;
    box.hidden = !msg;
  }

  class AuthNeeded extends Error {}

  async function api(method, path) {
    const headers = {};
    const token = sessionStorage.getItem(TOKEN_KEY);
    if (token) headers.Authorization = "Bearer " + token;
    let resp;
    try {
      resp = await fetch(path, { method, headers, cache: "no-store", credentials: "omit" });
    } catch (e) {
      throw new Error("the relay's admin API does not answer: " + e.message);
    }
    if (resp.status === 401) throw new AuthNeeded();
    let body = {};
    try {
      body = await resp.json();
    } catch (e) {
      throw new Error(`${method} ${path}: ${resp.status}, not a JSON answer`);
    }
    if (!resp.ok) throw new Error(`${resp.status} ${resp.statusText}: ${body.error || "request failed"}`);
    return body;
  }

  function stop() {
    if (timer) clearInterval(timer);
    timer = null;
    document.getElementById("live").hidden = true;
  }

  function askToken() {
    stop();
    main.replaceChildren(template("t-token"));
    const form = document.getElementById("token-form");
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      sessionStorage.setItem(TOKEN_KEY, document.getElementById("token").value);
      render();
    });
    document.getElementById("token").focus();
  }

  // guard runs a page's work and shows what went wrong, never a blank page.
  async function guard(fn) {
    try {
      await fn();
    } catch (e) {
      if (e instanceof AuthNeeded) {
        const had = sessionStorage.getItem(TOKEN_KEY);
        sessionStorage.removeItem(TOKEN_KEY);
        showError(had ? "That token was refused." : "");
        askToken();
        return;
      }
      showError(e.message);
    }
  }

  function fmtTime(s) {
    if (!s) return "";
    const d = new Date(s);
    return isNaN(d) ? s : d.toISOString().replace("T", " ").replace(/\.\d+Z$/, "Z");
  }

  function badge(state) {
    return el("span", { class: "badge s-" + state }, state.replace("_", " "));
  }

  // ---- the list ----

  function hashQuery() {
    const h = location.hash;
    const i = h.indexOf("?");
    return new URLSearchParams(i < 0 ? "" : h.slice(i + 1));
  }

  function renderList() {
    main.replaceChildren(template("t-list"));
    const q = hashQuery();
    const form = document.getElementById("filters");
    for (const name of ["job_id", "route", "target", "state", "since"]) {
      form.elements[name].value = q.get(name) || "";
    }
    form.addEventListener("submit", (ev) => {
      ev.preventDefault();
      const next = new URLSearchParams();
      for (const name of ["job_id", "route", "target", "state", "since"]) {
        const v = form.elements[name].value.trim();
        if (v) next.set(name, v);
      }
      location.hash = "#/?" + next.toString();
    });
    document.getElementById("clear").addEventListener("click", () => { location.hash = "#/"; });

    const seen = new Set();
    let first = true;
    let cursor = "";
    const load = async (more) => {
      const params = new URLSearchParams(q);
      params.set("limit", "50");
      if (more) params.set("cursor", cursor);
      const page = await api("GET", "/v1/messages?" + params.toString());
      showError("");
      document.getElementById("history-off").hidden = page.history !== false;
      const rows = document.getElementById("rows");
      const trs = page.messages.map((m) => {
        const tr = row(m);
        if (!first && !seen.has(m.id)) tr.classList.add("new");
        seen.add(m.id);
        return tr;
      });
      if (more) rows.append(...trs);
      else rows.replaceChildren(...trs);
      first = false;
      if (!more || page.next) cursor = page.next;
      const moreBtn = document.getElementById("more");
      moreBtn.hidden = !page.next;
      document.getElementById("empty").hidden = rows.children.length > 0;
    };
    document.getElementById("more").addEventListener("click", () => {
      stop(); // older pages stay put: no live refresh of the first page under them
      guard(() => load(true));
    });
    guard(async () => {
      await load(false);
      document.getElementById("live").hidden = false;
      timer = setInterval(() => guard(() => load(false)), REFRESH_MS);
    });
  }

  function row(m) {
    const link = el("a", { href: "#/m/" + encodeURIComponent(m.id), class: "mono" }, m.id);
    return el("tr", { "data-id": m.id },
      el("td", { class: "mono" }, fmtTime(m.received_at)),
      el("td", {}, link),
      el("td", {}, m.route),
      el("td", { class: "mono job" }, m.job_id || "-"),
      el("td", {}, m.job_status || "-"),
      el("td", {}, m.duplicates ? String(m.duplicates) : ""),
      el("td", {}, m.deliveries.map((d) => el("span", { class: "badge s-" + d.state, title: d.state }, d.target + ": " + d.state.replace("_", " ")))));
  }

  // ---- one message ----

  function renderMessage(id) {
    main.replaceChildren(template("t-message"));
    const load = async () => {
      const m = await api("GET", "/v1/messages/" + encodeURIComponent(id) + "?body=true");
      showError("");
      document.getElementById("m-title").textContent = m.id;
      const meta = [
        ["received", fmtTime(m.received_at)], ["route", m.route], ["provider", m.provider],
        ["job ID", m.job_id || "-"], ["job status", m.job_status || "-"], ["from", m.source_addr || "-"],
        ["content type", m.content_type || "-"], ["size", m.size + " bytes"],
        ["duplicates", m.duplicates ? `${m.duplicates}, last at ${fmtTime(m.last_duplicate_at)}` : "0"],
      ];
      document.getElementById("m-meta").replaceChildren(...meta.flatMap(([k, v]) => [el("dt", {}, k), el("dd", {}, v)]));
      document.getElementById("deliveries").replaceChildren(...m.deliveries.map((d) => delivery(m, d, load)));
      const body = document.getElementById("m-body");
      if (typeof m.body === "string") {
        let text = m.body;
        try { text = JSON.stringify(JSON.parse(m.body), null, 2); } catch (e) { /* not JSON: as sent */ }
        body.textContent = text;
      } else if (typeof m.body_base64 === "string") {
        body.textContent = "(not UTF-8; base64)\n" + m.body_base64;
      }
      return m.deliveries.some((d) => ["queued", "in_flight", "retrying"].includes(d.state));
    };
    guard(async () => {
      await load();
      document.getElementById("live").hidden = false;
      timer = setInterval(() => guard(load), REFRESH_MS);
    });
  }

  function delivery(m, d, reload) {
    const when = d.delivered_at ? "delivered " + fmtTime(d.delivered_at)
      : d.dead_at ? "dead since " + fmtTime(d.dead_at)
      : d.next_due ? "next attempt " + fmtTime(d.next_due) : "";
    const act = (label, method, path) => el("button", {
      type: "button", class: "quiet", "data-action": label,
      onclick: (ev) => {
        ev.target.disabled = true;
        guard(async () => {
          await api(method, path);
          await reload();
        }).finally(() => { ev.target.disabled = false; });
      },
    }, label);
    const buttons = [];
    if (d.state === "delivered" || d.state === "dead") {
      buttons.push(act("Redeliver", "POST", `/v1/messages/${encodeURIComponent(m.id)}/redeliver?target=${encodeURIComponent(d.target)}`));
    }
    if (d.state === "dead") {
      buttons.push(act("Replay dead letter", "POST", `/v1/dead-letters/${encodeURIComponent(d.id)}/replay`));
    }
    const steps = (d.attempts || []).map((a) => {
      const ok = a.status >= 200 && a.status < 300;
      const answer = typeof a.response === "string" ? a.response
        : typeof a.response_base64 === "string" ? "(binary, base64) " + a.response_base64 : "";
      return el("li", { class: ok ? "ok" : "fail" },
        el("div", { class: "line" },
          el("strong", {}, "#" + a.number),
          el("span", { class: "mono" }, fmtTime(a.start)),
          el("span", {}, a.duration_ms.toFixed(1) + " ms"),
          a.status ? el("span", { class: "badge " + (ok ? "s-delivered" : "s-dead") }, "HTTP " + a.status) : el("span", { class: "badge s-dead" }, "no answer"),
          a.error ? el("span", {}, a.error) : null),
        answer ? el("pre", { class: "answer" }, answer) : null);
    });
    return el("section", { class: "card delivery", "data-target": d.target },
      el("div", { class: "head" },
        el("h2", {}, d.target), badge(d.state),
        el("span", { class: "when" }, `${d.attempt} attempt${d.attempt === 1 ? "" : "s"}` + (when ? " · " + when : "")),
        el("span", { class: "spacer" }), buttons),
      steps.length ? el("ol", { class: "timeline" }, steps) : el("p", { class: "note" }, "No attempt recorded yet."));
  }

  function render() {
    stop();
    const token = sessionStorage.getItem(TOKEN_KEY);
    document.getElementById("logout").hidden = !token;
    const h = location.hash;
    if (h.startsWith("#/m/")) renderMessage(decodeURIComponent(h.slice(4)));
    else renderList();
  }

  document.getElementById("logout").addEventListener("click", () => {
    sessionStorage.removeItem(TOKEN_KEY);
    render();
  });
  window.addEventListener("hashchange", render);
  render();
})();
