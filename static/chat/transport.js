/*
 * Chat transports for the browser page: Server-Sent Events read from a fetch() body, and one
 * WebSocket that reconnects by itself. Both deliver the event objects of docs/api.md §5
 * (session, reasoning, delta, follow_up, completed, error) to the same callback and end a reply
 * with the same kind of result:
 *
 *   {outcome: "completed"}
 *   {outcome: "stopped", started}
 *   {outcome: "error", code, detail, retryable, started, status?, retryAfterMs?}
 *
 * `started` says whether the server accepted the turn (a `session` event arrived); only a reply
 * that never started is safe to send again automatically.
 *
 * Replies are sent with `resumable: true` (docs/api.md §9): when the connection drops mid-reply,
 * the transport picks the reply up where it was — SSE with `GET /api/sessions/{id}/stream` and
 * `Last-Event-ID`, the WebSocket with a `resume` frame once it has reconnected — so the text
 * arrives once, whole. `resume(sessionId, onEvent)` follows a reply from its start (after a reload).
 */
(function (global) {
  "use strict";

  const RETRYABLE_STATUS = new Set([408, 409, 425, 429, 500, 502, 503, 504]);
  // How many times in a row a dropped reply is resumed before the page gives up on it.
  const MAX_RESUME_ATTEMPTS = 8;

  /** Exponential backoff with "equal jitter": half the ceiling fixed, half random. */
  function backoffDelay(attempt, { baseMs = 500, capMs = 30000 } = {}) {
    const ceiling = Math.min(capMs, baseMs * 2 ** Math.max(0, attempt));
    return Math.round(ceiling / 2 + (Math.random() * ceiling) / 2);
  }

  /** Retry-After is either delta-seconds or an HTTP date; returns milliseconds or null. */
  function parseRetryAfter(value) {
    if (!value) return null;
    const trimmed = String(value).trim();
    if (/^\d+(\.\d+)?$/.test(trimmed)) return Math.round(Number(trimmed) * 1000);
    const date = Date.parse(trimmed);
    return Number.isNaN(date) ? null : Math.max(0, date - Date.now());
  }

  /** The `csrftoken` cookie (fresh after a login), else the token the page was rendered with. */
  function csrfToken() {
    const match = document.cookie.match(/(?:^|;\s*)csrftoken=([^;]+)/);
    if (match) return decodeURIComponent(match[1]);
    const meta = document.querySelector('meta[name="csrf-token"]');
    return meta ? meta.content : "";
  }

  /** Incremental parser of a text/event-stream body; calls onMessage({event, data, id}). */
  class SseParser {
    constructor(onMessage) {
      this.onMessage = onMessage;
      this.buffer = "";
      this.reset();
    }

    reset() {
      this.event = "";
      this.data = [];
      this.id = null;
    }

    push(text) {
      this.buffer += text;
      let end;
      while ((end = this.buffer.indexOf("\n")) >= 0) {
        const line = this.buffer.slice(0, end).replace(/\r$/, "");
        this.buffer = this.buffer.slice(end + 1);
        this.line(line);
      }
    }

    line(line) {
      if (line === "") {
        if (this.data.length) this.onMessage({ event: this.event || "message", data: this.data.join("\n"), id: this.id });
        this.reset();
        return;
      }
      if (line.startsWith(":")) return; // a comment: `: ping`
      const colon = line.indexOf(":");
      const field = colon < 0 ? line : line.slice(0, colon);
      let value = colon < 0 ? "" : line.slice(colon + 1);
      if (value.startsWith(" ")) value = value.slice(1);
      if (field === "data") this.data.push(value);
      else if (field === "event") this.event = value;
      else if (field === "id") this.id = value;
    }
  }

  /** Turns a stream of events into a result; shared by both transports. */
  class ReplyTracker {
    constructor(onEvent) {
      this.onEvent = onEvent;
      this.started = false;
      this.chatId = null;
      this.result = null;
    }

    handle(data) {
      if (!data || typeof data !== "object") return;
      if (data.type === "session") {
        this.started = true;
        this.chatId = data.chat_id || null;
      } else if (data.type === "completed") {
        this.result = { outcome: "completed" };
      } else if (data.type === "error") {
        this.result =
          data.code === "cancelled"
            ? { outcome: "stopped", started: this.started }
            : {
                outcome: "error",
                code: data.code || "error",
                detail: data.detail || "Something went wrong.",
                retryable: Boolean(data.retryable),
                started: this.started,
              };
      }
      this.onEvent(data);
    }
  }

  /** Stop the session's current reply wherever it runs (used when the chat id is not known). */
  function cancelSession(sessionId) {
    return fetch(`/api/sessions/${encodeURIComponent(sessionId)}/cancel`, {
      method: "POST",
      headers: { "X-CSRFToken": csrfToken() },
      credentials: "same-origin",
    });
  }

  /** Resolves after `ms`, or as soon as the browser is back online if it is offline now. */
  function pause(ms) {
    return new Promise((resolve) => {
      const done = () => {
        clearTimeout(timer);
        global.removeEventListener("online", done);
        resolve();
      };
      const timer = setTimeout(done, ms);
      global.addEventListener("online", done);
    });
  }

  function lostResult(started) {
    return {
      outcome: "error",
      code: "connection_lost",
      detail: "The connection dropped before the reply finished.",
      retryable: true,
      started,
    };
  }

  function timeoutResult(started, seconds) {
    return {
      outcome: "error",
      code: "timeout",
      detail: `Nothing arrived from the server for ${seconds} seconds, so the connection was dropped.`,
      retryable: true,
      started,
    };
  }

  /**
   * POST /api/chat/stream, read as Server-Sent Events. The server sends `: ping` every
   * heartbeat while the bot is silent, so a body that stays quiet for longer than
   * `inactivityMs` is a dead connection: it is aborted and reported as a timeout.
   */
  class SseTransport {
    constructor({ url = "/api/chat/stream", inactivityMs = 35000 } = {}) {
      this.name = "sse";
      this.url = url;
      this.inactivityMs = inactivityMs;
    }

    cancel(chatId) {
      return fetch(`/api/chats/${encodeURIComponent(chatId)}/cancel`, {
        method: "POST",
        headers: { "X-CSRFToken": csrfToken() },
        credentials: "same-origin",
      });
    }

    start(body, onEvent) {
      return this.run(body, onEvent, null);
    }

    /** Follow the session's current or latest reply from its first event (a reloaded page). */
    resume(sessionId, onEvent) {
      return this.run({ session_id: sessionId, resumable: true }, onEvent, 0);
    }

    /**
     * POST the chat (or, with `resumeFrom` a number, GET the session's stream after that event id),
     * and read it. A resumable reply whose connection drops is followed again after the last id
     * seen, with backoff, until it ends, is stopped, or can't be resumed.
     */
    run(body, onEvent, resumeFrom) {
      let controller = null;
      const tracker = new ReplyTracker((data) => {
        if (data.type === "session" && stopping) this.cancel(tracker.chatId).catch(() => {});
        onEvent(data);
      });
      let stopping = false;
      let timedOut = false;
      let timer = null;
      let lastId = resumeFrom;
      const seconds = Math.round(this.inactivityMs / 1000);
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          timedOut = true;
          if (controller) controller.abort();
        }, this.inactivityMs);
      };
      const resumable = Boolean(body.resumable && body.session_id);

      const open = () => {
        controller = new AbortController();
        if (lastId === null) {
          return fetch(this.url, {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRFToken": csrfToken() },
            body: JSON.stringify(body),
            credentials: "same-origin",
            cache: "no-store",
            signal: controller.signal,
          });
        }
        return fetch(`/api/sessions/${encodeURIComponent(body.session_id)}/stream`, {
          headers: { Accept: "text/event-stream", "Last-Event-ID": String(lastId) },
          credentials: "same-origin",
          cache: "no-store",
          signal: controller.signal,
        });
      };

      const read = async (response) => {
        const parser = new SseParser((message) => {
          if (message.id != null && /^\d+$/.test(message.id)) lastId = Number(message.id);
          if (message.data === "[DONE]") return;
          try {
            tracker.handle(JSON.parse(message.data));
          } catch (error) {
            console.warn("Unreadable event", message, error);
          }
        });
        const reader = response.body.getReader();
        const decoder = new TextDecoder();
        try {
          for (;;) {
            const { value, done } = await reader.read();
            if (done) break;
            arm();
            parser.push(decoder.decode(value, { stream: true }));
          }
        } catch (error) {
          // Aborted (Stop or the inactivity timeout) or the network failed; decided by the caller.
        } finally {
          clearTimeout(timer);
        }
      };

      const run = async () => {
        let lost = null; // how the connection was first lost, if resuming can't help after all
        for (let attempt = 0; ; attempt += 1) {
          const resuming = lastId !== null;
          timedOut = false;
          arm();
          let response = null;
          try {
            response = await open();
          } catch (error) {
            clearTimeout(timer);
            if (stopping) return { outcome: "stopped", started: tracker.started };
            if (!resuming) {
              if (timedOut) return timeoutResult(false, seconds);
              return {
                outcome: "error",
                code: "network_error",
                detail: "Could not reach the server. Check your connection.",
                retryable: true,
                started: false,
              };
            }
          }
          if (response && !response.ok) {
            clearTimeout(timer);
            const payload = await response.json().catch(() => ({}));
            const failure = {
              outcome: "error",
              code: payload.code || `http_${response.status}`,
              detail: payload.detail || `The server answered ${response.status} ${response.statusText}.`,
              retryable: RETRYABLE_STATUS.has(response.status),
              started: tracker.started,
              status: response.status,
              retryAfterMs: parseRetryAfter(response.headers.get("Retry-After")),
            };
            // A resume that can't be served (the reply is gone) ends as the connection's loss did;
            // a busy server is retried.
            if (!resuming) return failure;
            if (!failure.retryable) return lost || failure;
          } else if (response) {
            await read(response);
            if (tracker.result) return tracker.result;
          }
          if (stopping) return { outcome: "stopped", started: tracker.started };
          const loss = timedOut ? timeoutResult(tracker.started, seconds) : lostResult(tracker.started);
          lost = lost || loss;
          if (!resumable || !(tracker.started || resuming) || attempt >= MAX_RESUME_ATTEMPTS) return lost;
          // The connection dropped mid-reply: the reply runs on at the server; follow it again.
          if (lastId === null) lastId = 0;
          onEvent({ type: "resuming" });
          await pause(attempt === 0 ? 0 : backoffDelay(attempt - 1, { baseMs: 500, capMs: 10000 }));
          if (stopping) return { outcome: "stopped", started: tracker.started };
        }
      };

      return {
        result: run(),
        stop: () => {
          if (stopping) return;
          stopping = true;
          // Cancel upstream through the API; the stream then ends with `cancelled`. Abort anyway
          // if the server does not close it soon (closing also cancels a reply that is not resumable).
          const cancelling = tracker.chatId
            ? this.cancel(tracker.chatId)
            : body.session_id && (tracker.started || lastId !== null)
              ? cancelSession(body.session_id)
              : null;
          if (cancelling) {
            cancelling.catch(() => controller && controller.abort());
            setTimeout(() => controller && controller.abort(), 5000);
          } else if (controller) {
            controller.abort();
          }
        },
      };
    }
  }

  /**
   * One WebSocket to ws/chat/ for many turns. Keeps itself alive with `ping` frames every
   * heartbeat; a socket that hears nothing (not even `pong`) for `inactivityMs` is treated as
   * dead. Lost sockets reconnect with exponential backoff and jitter; close code 4401 (not
   * authenticated) does not reconnect.
   */
  class WsTransport {
    constructor({ path = "/ws/chat/", heartbeatMs = 15000, inactivityMs = 35000, onStatus = () => {} } = {}) {
      this.name = "ws";
      const scheme = location.protocol === "https:" ? "wss:" : "ws:";
      this.url = `${scheme}//${location.host}${path}`;
      this.heartbeatMs = heartbeatMs;
      this.inactivityMs = inactivityMs;
      this.onStatus = onStatus;
      this.socket = null;
      this.active = false;
      this.attempt = 0;
      this.reconnectTimer = null;
      this.keepalive = null;
      this.lastSeen = 0;
      this.current = null;
      this.parked = null;
      this.waiters = [];
      this.state = "idle";
      this.onOnline = () => {
        if (this.active && !this.socket) this.connect();
      };
      global.addEventListener("online", this.onOnline);
    }

    setState(state, extra = {}) {
      this.state = state;
      this.onStatus(state, extra);
    }

    activate() {
      this.active = true;
      if (!this.socket && this.state !== "unauthorized") this.connect();
    }

    deactivate() {
      this.active = false;
      clearTimeout(this.reconnectTimer);
      if (this.socket) this.drop("switched transport", { reconnect: false, code: 1000 });
      this.setState("idle");
    }

    connect() {
      clearTimeout(this.reconnectTimer);
      this.setState(this.attempt ? "reconnecting" : "connecting");
      let socket;
      try {
        socket = new WebSocket(this.url);
      } catch (error) {
        this.scheduleReconnect();
        return;
      }
      this.socket = socket;
      socket.onopen = () => {
        this.attempt = 0;
        this.lastSeen = Date.now();
        this.startKeepalive();
        this.setState("open");
        this.resumeParked();
        this.waiters.splice(0).forEach((waiter) => waiter.resolve());
      };
      socket.onmessage = (message) => {
        this.lastSeen = Date.now();
        let frame;
        try {
          frame = JSON.parse(message.data);
        } catch (error) {
          return;
        }
        this.frame(frame);
      };
      socket.onerror = () => {}; // `close` follows and decides
      socket.onclose = (event) => {
        if (this.socket !== socket) return;
        this.closed(event.code);
      };
    }

    /** Forget a socket now (don't wait for a closing handshake a dead network never completes). */
    drop(reason, { reconnect = true, code = 4000 } = {}) {
      const socket = this.socket;
      if (!socket) return;
      socket.onopen = socket.onmessage = socket.onclose = null;
      try {
        socket.close(code, reason);
      } catch (error) {
        // already closed
      }
      this.closed(reconnect ? 1006 : 1000, { reconnect });
    }

    closed(code, { reconnect = true } = {}) {
      this.socket = null;
      clearInterval(this.keepalive);
      const reply = this.current;
      this.current = null;
      if (reply && !reply.stopping && reply.resumable && (reply.tracker.started || reply.lastId !== null) && code !== 4401) {
        // The reply runs on at the server: ask for the rest once the socket is back.
        if ((reply.resumeAttempts = (reply.resumeAttempts || 0) + 1) <= MAX_RESUME_ATTEMPTS) {
          this.parked = reply;
          reply.tracker.onEvent({ type: "resuming" });
        } else reply.finish(lostResult(reply.tracker.started));
      } else if (reply) reply.finish(reply.stopping ? { outcome: "stopped", started: reply.tracker.started } : lostResult(reply.tracker.started));
      if (code === 4401) {
        this.waiters.splice(0).forEach((waiter) => waiter.reject(new Error("unauthorized")));
        this.setState("unauthorized");
        return;
      }
      if (this.active && reconnect) this.scheduleReconnect();
      else this.waiters.splice(0).forEach((waiter) => waiter.reject(new Error("closed")));
    }

    scheduleReconnect() {
      clearTimeout(this.reconnectTimer);
      const delayMs = backoffDelay(this.attempt, { baseMs: 1000, capMs: 30000 });
      this.attempt += 1;
      this.setState("waiting", { delayMs, attempt: this.attempt });
      this.reconnectTimer = setTimeout(() => this.connect(), delayMs);
    }

    /** Reconnect at once (the user asked, or the browser came back online). */
    reconnectNow() {
      if (this.socket) return;
      clearTimeout(this.reconnectTimer);
      this.active = true;
      this.connect();
    }

    startKeepalive() {
      clearInterval(this.keepalive);
      const tick = Math.max(1000, Math.min(this.heartbeatMs, this.inactivityMs / 3));
      this.keepalive = setInterval(() => {
        if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
        if (Date.now() - this.lastSeen > this.inactivityMs) {
          this.drop("inactive");
          return;
        }
        this.socket.send(JSON.stringify({ type: "ping" }));
      }, tick);
    }

    waitOpen(timeoutMs) {
      if (this.socket && this.socket.readyState === WebSocket.OPEN) return Promise.resolve();
      if (this.state === "unauthorized") return Promise.reject(new Error("unauthorized"));
      return new Promise((resolve, reject) => {
        const waiter = {};
        const timer = setTimeout(() => {
          this.waiters = this.waiters.filter((other) => other !== waiter);
          reject(new Error("timeout"));
        }, timeoutMs);
        waiter.resolve = () => {
          clearTimeout(timer);
          resolve();
        };
        waiter.reject = (error) => {
          clearTimeout(timer);
          reject(error);
        };
        this.waiters.push(waiter);
        if (!this.active || (!this.socket && this.state !== "waiting")) this.activate();
        else if (!this.socket) this.reconnectNow();
      });
    }

    /** A reply whose socket dropped continues after the last id it saw, on the new socket. */
    resumeParked() {
      const reply = this.parked;
      if (!reply || !this.socket || this.socket.readyState !== WebSocket.OPEN) return;
      this.parked = null;
      this.current = reply;
      this.socket.send(JSON.stringify({ type: "resume", session_id: reply.sessionId, last_event_id: reply.lastId || 0 }));
    }

    frame(frame) {
      if (!frame || frame.type === "pong") return;
      const reply = this.current;
      if (!reply) return;
      if (typeof frame.id === "number") reply.lastId = frame.id;
      if (frame.type === "done") {
        this.current = null;
        reply.finish(reply.tracker.result || lostResult(reply.tracker.started));
        return;
      }
      if (frame.type === "session" && reply.stopping) this.sendCancel(frame.chat_id);
      reply.tracker.handle(frame);
    }

    sendCancel(chatId) {
      if (!this.socket || this.socket.readyState !== WebSocket.OPEN) return;
      const frame = { type: "cancel" };
      if (chatId) frame.chat_id = chatId;
      this.socket.send(JSON.stringify(frame));
    }

    start(body, onEvent) {
      return this.run({ type: "chat", ...body }, onEvent, null);
    }

    /** Follow the session's current or latest reply from its first event (a reloaded page). */
    resume(sessionId, onEvent) {
      return this.run({ type: "resume", session_id: sessionId, last_event_id: 0 }, onEvent, 0);
    }

    run(frame, onEvent, lastId) {
      const reply = {
        tracker: new ReplyTracker(onEvent),
        stopping: false,
        done: false,
        resumable: Boolean(frame.type === "resume" || (frame.resumable && frame.session_id)),
        sessionId: frame.session_id,
        lastId,
      };
      const result = new Promise((resolve) => {
        reply.finish = (value) => {
          if (reply.done) return;
          reply.done = true;
          clearTimeout(reply.stopTimer);
          resolve(value);
        };
      });
      (async () => {
        try {
          await this.waitOpen(10000);
        } catch (error) {
          if (reply.stopping) reply.finish({ outcome: "stopped", started: false });
          else if (error.message === "unauthorized")
            reply.finish({
              outcome: "error",
              code: "unauthenticated",
              detail: "The server closed the socket: you are not signed in.",
              retryable: false,
              started: false,
            });
          else
            reply.finish({
              outcome: "error",
              code: "network_error",
              detail: "Could not open the WebSocket. Check your connection.",
              retryable: true,
              started: false,
            });
          return;
        }
        if (reply.stopping) {
          reply.finish({ outcome: "stopped", started: false });
          return;
        }
        this.current = reply;
        this.socket.send(JSON.stringify(frame));
      })();
      return {
        result,
        stop: () => {
          if (reply.stopping || reply.done) return;
          reply.stopping = true;
          if (this.current === reply) this.sendCancel(reply.tracker.chatId);
          else if (this.parked === reply && reply.sessionId) {
            // Between sockets: stop it over HTTP, and end here.
            this.parked = null;
            cancelSession(reply.sessionId).catch(() => {});
            reply.finish({ outcome: "stopped", started: reply.tracker.started });
          }
          // If the server never confirms, give the composer back anyway.
          reply.stopTimer = setTimeout(() => {
            if (this.current === reply) this.current = null;
            reply.finish({ outcome: "stopped", started: reply.tracker.started });
          }, 5000);
        },
      };
    }
  }

  global.ChatTransport = { SseTransport, WsTransport, SseParser, backoffDelay, parseRetryAfter, csrfToken };
})(window);
