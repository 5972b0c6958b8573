// Cardline console: live refresh and actions, nothing loaded from elsewhere.
// Every page's live part (#live) is fetched again every data-poll ms with the header
// X-Console-Fragment: 1 and swapped in; buttons with data-post POST to the API with the
// CSRF token the login returned (kept in localStorage, dropped at logout).
(function () {
  "use strict";
  var CSRF = "cardline.csrf";
  var live = document.getElementById("live");
  var flash = document.getElementById("flash");

  function say(text, bad) {
    if (!flash) return;
    flash.textContent = text;
    flash.className = bad ? "bad" : "ok";
  }

  function toLogin() {
    window.location = "/console/login?next=" + encodeURIComponent(window.location.pathname);
  }

  function refresh() {
    if (!live || document.hidden) return Promise.resolve();
    var typing = document.activeElement && live.contains(document.activeElement) &&
      document.activeElement.tagName === "INPUT";
    if (typing) return Promise.resolve();
    return fetch(window.location.href, {
      headers: {"X-Console-Fragment": "1", "Accept": "text/html"},
      credentials: "same-origin", cache: "no-store"
    }).then(function (r) {
      if (r.status === 401) { toLogin(); return; }
      if (r.ok) return r.text().then(function (html) { live.innerHTML = html; });
    }).catch(function () { say("the console cannot reach the server: retrying", true); });
  }

  function post(url, body) {
    return fetch(url, {
      method: "POST", credentials: "same-origin",
      headers: {"Content-Type": "application/json", "Accept": "application/json",
                "X-CSRF-Token": localStorage.getItem(CSRF) || ""},
      body: body || "{}"
    }).then(function (r) {
      return r.json().catch(function () { return {}; }).then(function (data) {
        if (r.status === 401) { toLogin(); return; }
        if (!r.ok) { say((data.error && data.error.message) || ("refused: " + r.status), true); return; }
        say("done: " + url.replace(/^\//, ""), false);
        return data;
      });
    });
  }

  document.addEventListener("click", function (event) {
    var button = event.target.closest("button[data-post]");
    if (button) {
      event.preventDefault();
      if (button.dataset.confirm && !window.confirm(button.dataset.confirm)) return;
      post(button.dataset.post, button.dataset.body).then(refresh);
    } else if (event.target.closest("button[data-logout]")) {
      post("/console/logout").then(function () { localStorage.removeItem(CSRF); toLogin(); });
    }
  });

  var login = document.getElementById("login");
  if (login) {
    login.addEventListener("submit", function (event) {
      event.preventDefault();
      fetch("/console/login", {
        method: "POST", credentials: "same-origin",
        headers: {"Content-Type": "application/json"},
        body: JSON.stringify({name: login.elements.name.value, password: login.elements.password.value})
      }).then(function (r) {
        return r.json().then(function (data) {
          if (!r.ok) { say("name or password not accepted", true); return; }
          localStorage.setItem(CSRF, data.csrf_token);
          window.location = login.dataset.next || "/console";
        });
      });
    });
  }

  if (live && live.dataset.poll) {
    window.setInterval(refresh, Math.min(parseInt(live.dataset.poll, 10) || 2000, 2000));
  }
})();
