// spool web: live refresh (fetch the page's live part every 2 s) and token-guarded actions.
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
    const focused = document.activeElement;
    if (focused && focused.tagName === "INPUT" && live.contains(focused)) { return; }
    const url = new URL(window.location.href);
    url.searchParams.set("partial", "1");
    try {
      const response = await fetch(url, { headers: { Accept: "text/html" }, cache: "no-store" });
      if (response.ok) {
        live.innerHTML = await response.text();
        document.getElementById("updated").textContent = new Date().toLocaleTimeString();
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
  document.getElementById("updated").textContent = new Date().toLocaleTimeString();
  window.setInterval(function () { if (!document.hidden) { refresh(); } }, REFRESH_MS);
})();
