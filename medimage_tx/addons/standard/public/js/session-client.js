// medimage_tx's session-client.js: the sign-in helpers the MedImage
// developer guide gives add-on pages (include it with
// <script src="../js/session-client.js"></script>).
//   getCookie(name), setCookie(sessionId): the "sessionId" cookie the page
//     passes on to its add-on's scripts;
//   checkSessionValid(sessionId, cb): cb(null) if the session is live, else
//     cb(message);
//   logout(cb): ends the session; cb(null) or cb(message).
// The password itself is checked by /addon/get-session?pass=... (which
// also signs this browser in to the server's own pages).

function getCookie(name) {
  var prefix = name + "=";
  var parts = document.cookie.split(";");
  for (var i = 0; i < parts.length; i++) {
    var part = parts[i].replace(/^\s+|\s+$/g, "");
    if (part.indexOf(prefix) === 0) { return decodeURIComponent(part.substring(prefix.length)); }
  }
  return "";
}

function setCookie(sessionId) {
  // Lives as long as the server's session may (it says when it has ended).
  var expires = new Date(Date.now() + 12 * 3600 * 1000).toUTCString();
  document.cookie = "sessionId=" + encodeURIComponent(sessionId || "") + "; path=/; SameSite=Strict; expires=" + expires;
}

function askSession(fields, cb) {
  var query = Object.keys(fields).map(function (key) {
    return encodeURIComponent(key) + "=" + encodeURIComponent(fields[key]);
  }).join("&");
  fetch("/addon/get-session?" + query, { credentials: "same-origin" })
    .then(function (response) { return response.text(); })
    .then(function (text) {
      var answer;
      try { answer = JSON.parse(text); } catch (e) { answer = { success: false }; }
      cb(answer);
    }, function () { cb({ success: false, error: "The server could not be reached." }); });
}

function checkSessionValid(sessionId, cb) {
  askSession({ sessionId: sessionId }, function (answer) {
    cb(answer.success === true ? null : "Sorry, that session ID is not valid.");
  });
}

function logout(cb) {
  var sessionId = getCookie("sessionId");
  if (!sessionId) {
    cb("Sorry, you don't seem to be logged in?");
    return false;
  }
  askSession({ sessionId: sessionId, logout: "true" }, function (answer) {
    if (answer.success === true) {
      setCookie("");
      cb(null);
    } else {
      cb("Sorry, there was a problem logging out. Please try again.");
    }
  });
  return false;
}
