/*
 * rag-loop feedback widget: thumbs, per-source relevance and a suggested correction for one
 * answer, posted to POST /v1/feedback with that answer's feedback token (no secret lives in
 * the page: the token authorises feedback on this one answer only, and expires).
 * No dependencies. Served by rag-loop at /widget.js.
 *
 *   <script src="https://rag.example.com/widget.js"></script>
 *   <div data-rag-loop-interaction="ID" data-rag-loop-token="TOKEN"
 *        data-rag-loop-sources='[{"rank":1,"chunk_id":"...","title":"...","text":"..."}]'></div>
 *
 * or from code: RagLoopFeedback.attach(element, {interactionId, token, sources, apiBase}).
 * `apiBase` defaults to the origin the script was loaded from; a page on another origin
 * must be listed in the service's RAG_LOOP_API_CORS_ORIGINS.
 */
(function () {
  "use strict";

  var script = document.currentScript;
  var DEFAULT_BASE = script && script.src ? new URL(script.src, location.href).origin : "";
  var counter = 0;

  function el(tag, attrs, children) {
    var node = document.createElement(tag);
    Object.keys(attrs || {}).forEach(function (name) {
      if (name === "text") node.textContent = attrs[name];
      else if (name === "onclick") node.addEventListener("click", attrs[name]);
      else node.setAttribute(name, attrs[name]);
    });
    (children || []).forEach(function (child) {
      node.appendChild(child);
    });
    return node;
  }

  function key() {
    if (window.crypto && window.crypto.randomUUID) return window.crypto.randomUUID();
    return String(Date.now()) + "-" + Math.random().toString(16).slice(2);
  }

  function attach(container, options) {
    var opts = options || {};
    var base = (opts.apiBase || DEFAULT_BASE).replace(/\/$/, "");
    var sources = opts.sources || [];
    var id = "rag-loop-" + ++counter;
    if (!opts.interactionId || !opts.token) {
      throw new Error("RagLoopFeedback.attach needs interactionId and token");
    }

    var status = el("p", { class: "rag-loop-status", role: "status", "aria-live": "polite" });

    function show(message, failed) {
      status.textContent = message;
      status.setAttribute("role", failed ? "alert" : "status");
      status.className = "rag-loop-status" + (failed ? " rag-loop-error" : " rag-loop-ok");
    }

    // one post per user action; each with its own idempotency key so a double click or a
    // network retry is stored once
    function post(payload, done) {
      var body = Object.assign(
        { interaction_id: opts.interactionId, token: opts.token, idempotency_key: key() },
        payload
      );
      show("Sending…", false);
      return fetch(base + "/v1/feedback", {
        method: "POST",
        headers: { "Content-Type": "application/json" },
        body: JSON.stringify(body),
      })
        .then(function (response) {
          return response
            .json()
            .catch(function () {
              return {};
            })
            .then(function (data) {
              if (!response.ok) {
                var reason = (data.error && data.error.message) || "HTTP " + response.status;
                throw new Error(reason);
              }
              show("Thank you, your feedback was saved.", false);
              if (done) done(data);
              return data;
            });
        })
        .catch(function (error) {
          show("Your feedback could not be sent: " + error.message + ". Please try again.", true);
        });
    }

    function toggle(group, pressed) {
      group.forEach(function (button) {
        button.setAttribute("aria-pressed", button === pressed ? "true" : "false");
      });
    }

    // words, not emoji: a page without an emoji font would show empty boxes
    var up = el("button", { type: "button", class: "rag-loop-thumb", "aria-pressed": "false",
      "aria-label": "Helpful answer", "data-thumb": "up", text: "Helpful" });
    var down = el("button", { type: "button", class: "rag-loop-thumb", "aria-pressed": "false",
      "aria-label": "Not a helpful answer", "data-thumb": "down", text: "Not helpful" });
    [up, down].forEach(function (button) {
      button.addEventListener("click", function () {
        post({ thumb: button.getAttribute("data-thumb") }, function () {
          toggle([up, down], button);
        });
      });
    });

    var sourceList = el("ul", { class: "rag-loop-sources" });
    sources.forEach(function (source) {
      var label = "[" + source.rank + "] " + (source.title || source.document_id || source.chunk_id);
      var yes = el("button", { type: "button", "aria-pressed": "false",
        "aria-label": "Source " + source.rank + " is relevant", text: "Relevant" });
      var no = el("button", { type: "button", "aria-pressed": "false",
        "aria-label": "Source " + source.rank + " is not relevant", text: "Not relevant" });
      [yes, no].forEach(function (button) {
        button.addEventListener("click", function () {
          var relevant = button === yes;
          post({ chunk_labels: [{ chunk_id: source.chunk_id, relevant: relevant }] }, function () {
            toggle([yes, no], button);
          });
        });
      });
      // each source once: its title, a snippet of its text, and its two buttons beside it
      var item = [el("span", { class: "rag-loop-source-title", text: label })];
      if (source.text) {
        var snippet = source.text.replace(/\s+/g, " ").trim();
        if (snippet.length > 180) snippet = snippet.slice(0, 177).replace(/\s+\S*$/, "") + "...";
        item.push(el("span", { class: "rag-loop-snippet", text: snippet }));
      }
      item.push(el("span", { class: "rag-loop-source-buttons" }, [yes, no]));
      sourceList.appendChild(el("li", {}, item));
    });

    var textId = id + "-correction";
    var text = el("textarea", { id: textId, rows: "3", maxlength: "8000" });
    var send = el("button", { type: "button", text: "Send correction" });
    send.addEventListener("click", function () {
      var value = text.value.trim();
      if (!value) {
        show("Write the correct answer first.", true);
        text.focus();
        return;
      }
      post({ correction: value }, function () {
        text.value = "";
        show("Thank you, your correction will be reviewed.", false);
      });
    });
    var correction = el("details", { class: "rag-loop-correction" }, [
      el("summary", { text: "Suggest a correction" }),
      el("label", { for: textId, text: "The correct answer" }),
      text,
      send,
    ]);

    var children = [el("div", { class: "rag-loop-thumbs" }, [up, down])];
    if (sources.length) {
      children.push(el("p", { id: id + "-sources", text: "Were these sources relevant?" }));
      sourceList.setAttribute("aria-labelledby", id + "-sources");
      children.push(sourceList);
    }
    children.push(correction, status);
    var root = el("div", { class: "rag-loop-feedback", role: "group",
      "aria-label": "Feedback on this answer" }, children);
    container.appendChild(root);
    return root;
  }

  function autoAttach() {
    var nodes = document.querySelectorAll("[data-rag-loop-interaction]:not([data-rag-loop-ready])");
    Array.prototype.forEach.call(nodes, function (node) {
      node.setAttribute("data-rag-loop-ready", "");
      attach(node, {
        interactionId: node.getAttribute("data-rag-loop-interaction"),
        token: node.getAttribute("data-rag-loop-token"),
        sources: JSON.parse(node.getAttribute("data-rag-loop-sources") || "[]"),
        apiBase: node.getAttribute("data-rag-loop-api") || undefined,
      });
    });
  }

  window.RagLoopFeedback = { attach: attach, scan: autoAttach, version: "1" };
  if (document.readyState === "loading") document.addEventListener("DOMContentLoaded", autoAttach);
  else autoAttach();
})();
