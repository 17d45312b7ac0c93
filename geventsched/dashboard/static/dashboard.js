// The dashboard's only script (the page's Content-Security-Policy allows no inline script).
// - Live updates: one server-sent event stream per page sends the HTML of the page's live region
//   (#live), rendered and escaped on the server, whenever it changes; the browser reconnects by itself.
// - A confirmation before a change that a form marks with data-confirm.
(function () {
  "use strict";
  var badge = document.getElementById("live-state");

  function show(text, state) {
    if (badge) {
      badge.textContent = text;
      badge.className = "live " + state;
    }
  }

  // A message after a change is said once: drop it from the address, so that a reload or the live
  // stream (which asks for this address) does not say it again.
  var params = new URLSearchParams(location.search);
  if (params.has("msg")) {
    params.delete("msg");
    params.delete("n");
    var rest = params.toString();
    history.replaceState(null, "", location.pathname + (rest ? "?" + rest : ""));
  }

  var live = document.getElementById("live");
  if (live && window.EventSource) {
    var source = new EventSource("/events?view=" + encodeURIComponent(location.pathname + location.search));
    source.onopen = function () { show("live", "on"); };
    source.onerror = function () { show("reconnecting…", "off"); };
    source.onmessage = function (event) {
      live.innerHTML = JSON.parse(event.data).html;
      live.setAttribute("data-updated", String(Date.now()));
      show("live", "on");
    };
  }

  document.addEventListener("submit", function (event) {
    var question = event.target.getAttribute("data-confirm");
    if (question && !window.confirm(question)) {
      event.preventDefault();
    }
  });
})();
