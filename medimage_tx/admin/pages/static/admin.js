// The web admin's little JavaScript: add-on install and removal answer
// JSON, so their forms are sent here and the answer shown in the page.
// Everything else works without JavaScript.
(function () {
  "use strict";
  function say(form, text, bad) {
    var out = document.getElementById(form.getAttribute("data-result"));
    if (!out) { return; }
    out.textContent = text;
    out.className = bad ? "error" : "notice";
  }
  document.querySelectorAll("form[data-json]").forEach(function (form) {
    form.addEventListener("submit", function (event) {
      event.preventDefault();
      var confirmText = form.getAttribute("data-confirm");
      if (confirmText && !window.confirm(confirmText)) { return; }
      var hasFile = form.querySelector("input[type=file]");
      var body = hasFile ? new FormData(form) : new URLSearchParams(new FormData(form));
      say(form, "Working on it\u2026", false);
      fetch(form.action, { method: "POST", body: body, credentials: "same-origin" })
        .then(function (response) {
          return response.text().then(function (text) {
            var answer;
            try { answer = JSON.parse(text); } catch (e) { answer = { message: text }; }
            say(form, answer.message || ("HTTP " + response.status), !answer.finished);
            var after = form.getAttribute("data-after");
            if (answer.finished) {
              window.setTimeout(function () {
                if (after) { window.location.assign(after); } else { window.location.reload(); }
              }, 1200);
            }
          });
        })
        .catch(function () { say(form, "The server could not be reached.", true); });
    });
  });
})();
