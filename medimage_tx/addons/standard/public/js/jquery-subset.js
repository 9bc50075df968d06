// medimage_tx's own small stand-in for the part of jQuery that MedImage
// add-on pages use (the original's standard header loaded jQuery; this
// server ships no third-party script).  jQuery(fn), jQuery(selector) with
// html, text, val, attr, addClass, removeClass, show, hide, append, click,
// on, trigger, each, first; jQuery.ajax, jQuery.get and jQuery.post; and
// Bootstrap's data-toggle="tab" tabs.  A page that needs more loads the
// real jQuery itself.
(function () {
  "use strict";

  function Found(elements) {
    this.elements = elements;
    this.length = elements.length;
    for (var i = 0; i < elements.length; i++) { this[i] = elements[i]; }
  }

  function run(scripts) {
    // Like jQuery's html(): scripts in inserted HTML run.
    scripts.forEach(function (old) {
      var script = document.createElement("script");
      for (var i = 0; i < old.attributes.length; i++) {
        script.setAttribute(old.attributes[i].name, old.attributes[i].value);
      }
      script.text = old.text;
      old.parentNode.replaceChild(script, old);
    });
  }

  Found.prototype = {
    each: function (f) { this.elements.forEach(function (e, i) { f.call(e, i, e); }); return this; },
    first: function () { return new Found(this.elements.slice(0, 1)); },
    html: function (value) {
      if (value === undefined) { return this.length ? this[0].innerHTML : undefined; }
      return this.each(function () {
        this.innerHTML = String(value);
        run(Array.prototype.slice.call(this.querySelectorAll("script")));
      });
    },
    append: function (value) {
      return this.each(function () {
        var holder = document.createElement("div");
        holder.innerHTML = String(value);
        var scripts = Array.prototype.slice.call(holder.querySelectorAll("script"));
        while (holder.firstChild) { this.appendChild(holder.firstChild); }
        run(scripts);
      });
    },
    text: function (value) {
      if (value === undefined) { return this.elements.map(function (e) { return e.textContent; }).join(""); }
      return this.each(function () { this.textContent = String(value); });
    },
    val: function (value) {
      if (value === undefined) { return this.length ? this[0].value : undefined; }
      return this.each(function () { this.value = value; });
    },
    attr: function (name, value) {
      if (value === undefined) { return this.length ? this[0].getAttribute(name) : undefined; }
      return this.each(function () { this.setAttribute(name, value); });
    },
    addClass: function (name) { return this.each(function () { this.classList.add(name); }); },
    removeClass: function (name) { return this.each(function () { this.classList.remove(name); }); },
    show: function () { return this.each(function () { this.style.display = ""; this.hidden = false; }); },
    hide: function () { return this.each(function () { this.style.display = "none"; }); },
    on: function (event, handler) {
      return this.each(function () {
        var element = this;
        element.addEventListener(event, function (e) {
          if (handler.call(element, e) === false) { e.preventDefault(); }
        });
      });
    },
    click: function (handler) {
      if (handler === undefined) { return this.trigger("click"); }
      return this.on("click", handler);
    },
    trigger: function (event) {
      return this.each(function () {
        if (event === "click" && typeof this.click === "function") { this.click(); }
        else { this.dispatchEvent(new Event(event, { bubbles: true })); }
      });
    },
    ready: function (f) {
      if (document.readyState === "loading") { document.addEventListener("DOMContentLoaded", f); }
      else { f(); }
      return this;
    }
  };

  function jQuery(what) {
    if (typeof what === "function") { return new Found([document]).ready(what); }
    if (what === document || what === window || (what && what.nodeType)) { return new Found([what]); }
    if (what instanceof Found) { return what; }
    if (typeof what === "string" && what.trim().charAt(0) === "<") {
      var holder = document.createElement("div");
      holder.innerHTML = what;
      return new Found(Array.prototype.slice.call(holder.childNodes));
    }
    try { return new Found(Array.prototype.slice.call(document.querySelectorAll(what))); }
    catch (e) { return new Found([]); }
  }

  function query(data) {
    if (!data) { return ""; }
    if (typeof data === "string") { return data; }
    return Object.keys(data).map(function (key) {
      return encodeURIComponent(key) + "=" + encodeURIComponent(data[key]);
    }).join("&");
  }

  jQuery.ajax = function (options) {
    var method = (options.type || options.method || "GET").toUpperCase();
    var url = options.url, body = query(options.data), init = { method: method, credentials: "same-origin" };
    if (method === "GET" && body) { url += (url.indexOf("?") < 0 ? "?" : "&") + body; }
    else if (body) {
      init.body = body;
      init.headers = { "Content-Type": "application/x-www-form-urlencoded; charset=UTF-8" };
    }
    return fetch(url, init).then(function (response) {
      return response.text().then(function (text) {
        // As jQuery guesses: JSON is parsed only when the server says it is JSON.
        var type = response.headers.get("content-type") || "";
        var data = (options.dataType === "json" || type.indexOf("application/json") === 0)
          ? JSON.parse(text) : text;
        if (response.ok) { if (options.success) { options.success(data, "success"); } }
        else if (options.error) { options.error(response, "error", response.statusText); }
        if (options.complete) { options.complete(response); }
        return data;
      });
    }, function (failure) {
      if (options.error) { options.error(null, "error", String(failure)); }
      if (options.complete) { options.complete(null); }
    });
  };
  jQuery.get = function (url, data, success) {
    if (typeof data === "function") { success = data; data = undefined; }
    return jQuery.ajax({ url: url, data: data, success: success });
  };
  jQuery.post = function (url, data, success) {
    return jQuery.ajax({ url: url, type: "POST", data: data, success: success });
  };

  // Bootstrap's tabs: a link with data-toggle="tab" shows the pane it names.
  document.addEventListener("click", function (event) {
    var link = event.target.closest ? event.target.closest("[data-toggle=tab]") : null;
    if (!link) { return; }
    event.preventDefault();
    var list = link.closest("ul"), pane = document.querySelector(link.getAttribute("href"));
    if (list) { list.querySelectorAll("li").forEach(function (li) { li.classList.remove("active"); }); }
    if (link.parentNode) { link.parentNode.classList.add("active"); }
    if (pane && pane.parentNode) {
      Array.prototype.forEach.call(pane.parentNode.children, function (other) {
        other.classList.remove("active", "in");
      });
      pane.classList.add("active", "in");
    }
  });

  window.jQuery = window.$ = jQuery;
})();
