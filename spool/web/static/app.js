// spool web: live refresh (fetch the page's live part every 2 s), token-guarded actions, and
// times shown in UTC or in the browser's zone (a switch kept in localStorage), always 24-hour.
// The token lives in sessionStorage (this tab only) and travels in the Authorization header;
// the server sets no cookies.
"use strict";
(function () {
  const KEY = "spool-token";
  const REFRESH_MS = 2000;
  const live = document.getElementById("live");
  const flash = document.getElementById("flash");
  const tokenInput = document.getElementById("token");
  const tokenState = document.getElementById("token-state");

  function token() { return sessionStorage.getItem(KEY) || ""; }

  // ---- times: every <time data-at="epoch"> in UTC or local, 24-hour, with its zone ----------
  const ZONE_KEY = "spool-zone";
  const zoneButton = document.getElementById("zone");
  function local() { return localStorage.getItem(ZONE_KEY) === "local"; }
  function two(n) { return String(n).padStart(2, "0"); }
  function zoneName(date) {
    if (!local()) { return "UTC"; }
    const minutes = -date.getTimezoneOffset();
    const sign = minutes < 0 ? "-" : "+";
    const abs = Math.abs(minutes);
    return "UTC" + sign + two(Math.floor(abs / 60)) + ":" + two(abs % 60);
  }
  function clock(date) {
    const u = !local();
    const h = u ? date.getUTCHours() : date.getHours();
    const m = u ? date.getUTCMinutes() : date.getMinutes();
    const s = u ? date.getUTCSeconds() : date.getSeconds();
    return two(h) + ":" + two(m) + ":" + two(s);
  }
  function stamp(date) {
    const u = !local();
    const y = u ? date.getUTCFullYear() : date.getFullYear();
    const mo = (u ? date.getUTCMonth() : date.getMonth()) + 1;
    const d = u ? date.getUTCDate() : date.getDate();
    return y + "-" + two(mo) + "-" + two(d) + " " + clock(date) + " " + zoneName(date);
  }
  function showTimes() {
    document.querySelectorAll("time[data-at]").forEach(function (node) {
      node.textContent = stamp(new Date(parseFloat(node.dataset.at) * 1000));
    });
    zoneButton.textContent = "times: " + zoneName(new Date());
  }
  function showUpdated() {
    const now = new Date();
    document.getElementById("updated").textContent = clock(now) + " " + zoneName(now);
  }
  zoneButton.addEventListener("click", function () {
    localStorage.setItem(ZONE_KEY, local() ? "utc" : "local");
    showTimes();
    showUpdated();
  });

  function showTokenState() {
    tokenState.textContent = token() ? "token set" : "no token";
    tokenInput.value = "";
  }

  function say(text, ok) {
    flash.textContent = text;
    flash.className = ok ? "ok" : "bad";
  }

  document.getElementById("token-form").addEventListener("submit", function (event) {
    event.preventDefault();
    const value = tokenInput.value.trim();
    if (value) { sessionStorage.setItem(KEY, value); } else { sessionStorage.removeItem(KEY); }
    showTokenState();
  });

  async function refresh() {
    if (live.hasAttribute("data-static")) { return; }
    const focused = document.activeElement;
    if (focused && focused.tagName === "INPUT" && live.contains(focused)) { return; }
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    try {
      const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (response.ok) {
        live.innerHTML = await response.text();
        showTimes();
        showUpdated();
      }
    } catch (error) {
      document.getElementById("updated").textContent = "server unreachable";
    }
  }

  async function act(button) {
    if (!token()) {
      say("enter the token first (top right)", false);
      tokenInput.focus();
      return;
    }
    if (!window.confirm(button.dataset.confirm || "Are you sure?")) { return; }
    const options = {
      method: button.dataset.method || "POST",
      headers: { Authorization: "Bearer " + token(), "Content-Type": "application/json" },
    };
    if (button.dataset.body) { options.body = button.dataset.body; }
    button.disabled = true;
    try {
      const response = await fetch(button.dataset.url, options);
      const data = await response.json().catch(function () { return {}; });
      if (response.ok) {
        say(button.textContent.trim() + ": " + (data.id || data.queue || "ok") + " done", true);
      } else {
        say(button.textContent.trim() + " refused: " + (data.error || response.status), false);
      }
    } catch (error) {
      say("server unreachable", false);
    } finally {
      button.disabled = false;
      refresh();
    }
  }

  document.addEventListener("click", function (event) {
    const button = event.target.closest("button[data-action]");
    if (button) { event.preventDefault(); act(button); }
  });

  showTokenState();
  showTimes();
  showUpdated();
  window.setInterval(function () { if (!document.hidden) { refresh(); } }, REFRESH_MS);
})();
