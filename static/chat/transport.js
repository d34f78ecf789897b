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
 */
(function (global) {
  "use strict";

  const RETRYABLE_STATUS = new Set([408, 409, 425, 429, 500, 502, 503, 504]);

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
      const controller = new AbortController();
      const tracker = new ReplyTracker((data) => {
        if (data.type === "session" && stopping) this.cancel(tracker.chatId).catch(() => {});
        onEvent(data);
      });
      let stopping = false;
      let timedOut = false;
      let timer = null;
      const seconds = Math.round(this.inactivityMs / 1000);
      const arm = () => {
        clearTimeout(timer);
        timer = setTimeout(() => {
          timedOut = true;
          controller.abort();
        }, this.inactivityMs);
      };

      const run = async () => {
        arm();
        let response;
        try {
          response = await fetch(this.url, {
            method: "POST",
            headers: { "Content-Type": "application/json", Accept: "text/event-stream", "X-CSRFToken": csrfToken() },
            body: JSON.stringify(body),
            credentials: "same-origin",
            cache: "no-store",
            signal: controller.signal,
          });
        } catch (error) {
          clearTimeout(timer);
          if (stopping) return { outcome: "stopped", started: false };
          if (timedOut) return timeoutResult(false, seconds);
          return {
            outcome: "error",
            code: "network_error",
            detail: "Could not reach the server. Check your connection.",
            retryable: true,
            started: false,
          };
        }
        if (!response.ok) {
          clearTimeout(timer);
          const payload = await response.json().catch(() => ({}));
          return {
            outcome: "error",
            code: payload.code || `http_${response.status}`,
            detail: payload.detail || `The server answered ${response.status} ${response.statusText}.`,
            retryable: RETRYABLE_STATUS.has(response.status),
            started: false,
            status: response.status,
            retryAfterMs: parseRetryAfter(response.headers.get("Retry-After")),
          };
        }
        const parser = new SseParser((message) => {
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
          // Aborted (Stop or the inactivity timeout) or the network failed; decided below.
        } finally {
          clearTimeout(timer);
        }
        if (tracker.result) return tracker.result;
        if (stopping) return { outcome: "stopped", started: tracker.started };
        if (timedOut) return timeoutResult(tracker.started, seconds);
        return lostResult(tracker.started);
      };

      return {
        result: run(),
        stop: () => {
          if (stopping) return;
          stopping = true;
          if (tracker.chatId) {
            // Cancel upstream through the API; the stream then ends with `cancelled`. Abort anyway
            // if the server does not close it soon (closing also cancels the turn server-side).
            this.cancel(tracker.chatId).catch(() => controller.abort());
            setTimeout(() => controller.abort(), 5000);
          } else {
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
      if (reply) reply.finish(reply.stopping ? { outcome: "stopped", started: reply.tracker.started } : lostResult(reply.tracker.started));
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

    frame(frame) {
      if (!frame || frame.type === "pong") return;
      const reply = this.current;
      if (!reply) return;
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
      const reply = { tracker: new ReplyTracker(onEvent), stopping: false, done: false };
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
        this.socket.send(JSON.stringify({ type: "chat", ...body }));
      })();
      return {
        result,
        stop: () => {
          if (reply.stopping || reply.done) return;
          reply.stopping = true;
          if (this.current === reply) this.sendCancel(reply.tracker.chatId);
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
