// The job page's playground: instead of posting the form and waiting for a page with both whole
// answers, stream the fine-tuned and the base model's answers into the page side by side.
(function () {
  "use strict";
  var form = document.getElementById("playground-form");
  if (!form || !window.fetch || !window.TextDecoder) return;

  function stream(side, target) {
    var body = new URLSearchParams(new FormData(form));
    target.textContent = "";
    target.setAttribute("aria-busy", "true");
    return fetch(form.getAttribute("data-stream-url") + "?side=" + side, {
      method: "POST", credentials: "same-origin", body: body,
      headers: { "Content-Type": "application/x-www-form-urlencoded" }
    }).then(function (r) {
      if (!r.ok || !r.body) return r.text().then(function () { target.textContent = "(no answer: HTTP " + r.status + ")"; });
      var reader = r.body.getReader(), decoder = new TextDecoder(), buffer = "";
      function pump() {
        return reader.read().then(function (part) {
          if (part.done) return;
          buffer += decoder.decode(part.value, { stream: true });
          var events = buffer.split("\n\n");
          buffer = events.pop();
          events.forEach(function (event) {
            if (event.indexOf("data: ") !== 0 || event === "data: [DONE]") return;
            var chunk = JSON.parse(event.slice(6));
            if (chunk.error) { target.textContent += "\n(" + chunk.error.message + ")"; return; }
            (chunk.choices || []).forEach(function (c) { target.textContent += (c.delta && c.delta.content) || ""; });
          });
          return pump();
        });
      }
      return pump();
    }).catch(function (e) { target.textContent = "(no answer: " + e + ")"; })
      .then(function () { target.removeAttribute("aria-busy"); });
  }

  form.addEventListener("submit", function (event) {
    event.preventDefault();
    var button = form.querySelector("button[type=submit]");
    button.disabled = true;
    Promise.all([stream("tuned", document.getElementById("answer-tuned")),
                 stream("base", document.getElementById("answer-base"))])
      .then(function () { button.disabled = false; form.setAttribute("data-done", "1"); });
  });
})();
