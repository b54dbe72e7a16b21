// Keeps a page's [data-live-url] region fresh by polling the server for that region's HTML.
// The page works without this script; it only saves reloading. Polling stops once the server
// answers with "X-Live-Done: 1" (nothing on the page can change any more).
(function () {
  "use strict";
  var region = document.querySelector("[data-live-url]");
  if (!region || region.getAttribute("data-live-done") === "1") return;
  var url = region.getAttribute("data-live-url");
  var every = 1500;
  var last = null;

  // Show the cancel / delete forms that fit the job's new status.
  function syncActions() {
    var status = region.querySelector("[data-status]");
    if (!status) return;
    var cancellable = status.getAttribute("data-cancellable") === "1";
    document.querySelectorAll("form[data-when]").forEach(function (form) {
      var when = form.getAttribute("data-when");
      form.hidden = when === "cancellable" ? !cancellable : cancellable || status.getAttribute("data-status") === "cancel_requested";
    });
  }

  function tick() {
    fetch(url, { credentials: "same-origin", headers: { Accept: "text/html" } })
      .then(function (r) {
        if (r.status === 401) { window.location.reload(); return null; }
        if (!r.ok) throw new Error("HTTP " + r.status);
        var done = r.headers.get("X-Live-Done") === "1";
        return r.text().then(function (html) {
          // Only touch the DOM on a change: keeps scroll position, focus and screen readers calm.
          if (html !== last) { region.innerHTML = html; last = html; syncActions(); }
          if (done) region.setAttribute("data-live-done", "1");
          else setTimeout(tick, every);
        });
      })
      .catch(function () { setTimeout(tick, every * 4); });
  }
  setTimeout(tick, every);
})();
