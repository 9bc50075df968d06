// medimage_tx's basic-authentication/session.js: the sign-in check the
// MedImage developer guide gives add-on scripts:
//
//   var session = require('../basic-authentication/session.js');
//   if (opts.sessionId && session.checkSessionValid(opts.sessionId) > -1) { ... }
//
// The server starts each /addon/ script with the live password sessions of
// that moment in MEDIMAGE_SESSIONS (their SHA-256, hex, comma-separated;
// never the sessions themselves), so the check needs no file and no
// network, and a session that has ended is never valid.  A script started
// some other way sees no session.

var crypto = require('crypto');

function liveSessions() {
  var listed = process.env.MEDIMAGE_SESSIONS || "";
  return listed ? listed.split(",") : [];
}

module.exports = {
  // The session's place among the live ones (> -1), or -1.
  checkSessionValid: function (sessionId) {
    if (typeof sessionId !== "string" || sessionId === "") { return -1; }
    var digest = crypto.createHash("sha256").update(sessionId, "utf8").digest("hex");
    return liveSessions().indexOf(digest);
  }
};
