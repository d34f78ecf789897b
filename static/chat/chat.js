/*
 * The chat page: conversation view, composer, session list. Talks to the endpoints of docs/api.md
 * through transport.js. All bot and user text is rendered as text or as sanitised Markdown in
 * which raw HTML is shown literally; nothing from the server is ever inserted as HTML unsanitised.
 */
(function () {
  "use strict";

  const { SseTransport, WsTransport, backoffDelay, csrfToken } = window.ChatTransport;

  const body = document.body;
  const heartbeatSeconds = Number(body.dataset.heartbeatSeconds) || 15;
  const loginUrl = body.dataset.loginUrl || "/accounts/login/";
  // Twice the heartbeat plus slack: one lost ping is not yet a dead connection.
  const inactivityMs = Math.round(heartbeatSeconds * 2000 + 5000);
  const MAX_AUTO_RETRIES = 4;
  // Failures before the server accepted the turn that are worth retrying by themselves.
  const AUTO_RETRY_CODES = new Set([
    "network_error",
    "timeout",
    "rate_limited",
    "upstream_rate_limited",
    "upstream_unavailable",
    "service_unavailable",
    "interrupted",
    "session_busy",
    "upstream_timeout",
  ]);
  const STORAGE = { transport: "chat.transport", titles: "chat.titles" };

  const $ = (id) => document.getElementById(id);
  const el = {
    thread: $("thread"),
    conversation: $("conversation"),
    empty: $("empty-state"),
    form: $("composer"),
    input: $("message"),
    send: $("send"),
    stop: $("stop"),
    sessions: $("session-list"),
    sessionsEmpty: $("session-empty"),
    title: $("conversation-title"),
    status: $("connection-status"),
    banner: $("banner"),
    jump: $("jump"),
    toasts: $("toasts"),
    dialog: $("confirm-dialog"),
    sidebar: $("sidebar"),
    scrim: $("scrim"),
    menu: $("menu-button"),
    attach: $("attach"),
    fileInput: $("file-input"),
    tray: $("attachment-tray"),
    dropOverlay: $("drop-overlay"),
  };

  // --- safe rendering -------------------------------------------------------------------------

  function escapeHtml(text) {
    return String(text).replace(/[&<>"']/g, (c) => ({ "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" })[c]);
  }

  const markdown =
    window.marked && window.DOMPurify
      ? new window.marked.Marked({
          gfm: true,
          breaks: true,
          // Raw HTML in a reply is shown as text, never interpreted.
          renderer: {
            html(token) {
              const text = escapeHtml(token.text);
              return token.block ? `<p>${text}</p>` : text;
            },
          },
        })
      : null;

  if (window.DOMPurify) {
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
      if (node.tagName === "IMG") node.setAttribute("loading", "lazy");
    });
  }

  function renderMarkdown(target, text) {
    if (!markdown) {
      target.textContent = text;
      target.classList.add("plain");
      return;
    }
    try {
      const html = markdown.parse(text);
      target.innerHTML = window.DOMPurify.sanitize(html, { USE_PROFILE: { html: true }, FORBID_TAGS: ["style", "form", "input", "button"] });
    } catch (error) {
      target.textContent = text;
    }
  }

  function svgIcon(name) {
    const svg = document.createElementNS("http://www.w3.org/2000/svg", "svg");
    svg.setAttribute("aria-hidden", "true");
    const use = document.createElementNS("http://www.w3.org/2000/svg", "use");
    use.setAttribute("href", `#i-${name}`);
    svg.appendChild(use);
    return svg;
  }

  function make(tag, className, text) {
    const node = document.createElement(tag);
    if (className) node.className = className;
    if (text !== undefined) node.textContent = text;
    return node;
  }

  // --- scrolling --------------------------------------------------------------------------------

  let stickToBottom = true;

  function nearBottom() {
    const c = el.conversation;
    return c.scrollHeight - c.scrollTop - c.clientHeight < 80;
  }

  function scrollToBottom(force) {
    if (force) stickToBottom = true;
    if (stickToBottom) {
      el.conversation.scrollTop = el.conversation.scrollHeight;
      el.jump.hidden = true;
    } else {
      el.jump.hidden = false;
    }
  }

  el.conversation.addEventListener("scroll", () => {
    stickToBottom = nearBottom();
    if (stickToBottom) el.jump.hidden = true;
  });
  el.jump.addEventListener("click", () => scrollToBottom(true));

  // --- toasts, banner, confirm --------------------------------------------------------------------

  function toast(text, kind = "error") {
    const node = make("div", `toast toast-${kind}`, text);
    el.toasts.appendChild(node);
    setTimeout(() => node.classList.add("leaving"), 4200);
    setTimeout(() => node.remove(), 4600);
  }

  function showSignInBanner() {
    el.banner.replaceChildren();
    el.banner.append("You are not signed in, so the server won't accept messages from this browser. ");
    const link = make("a", "", "Sign in");
    link.href = loginUrl;
    el.banner.append(link);
    el.banner.hidden = false;
  }

  function confirmAction({ title, text, action }) {
    return new Promise((resolve) => {
      if (typeof el.dialog.showModal !== "function") {
        resolve(window.confirm(`${title}\n\n${text}`));
        return;
      }
      $("confirm-title").textContent = title;
      $("confirm-text").textContent = text;
      $("confirm-ok").textContent = action;
      el.dialog.returnValue = "";
      el.dialog.addEventListener("close", () => resolve(el.dialog.returnValue === "ok"), { once: true });
      el.dialog.showModal();
    });
  }

  // --- session titles (the server's, from each session's first question, else this browser's) -----

  const TITLE_CHARS = 80;
  // Elements whose text would otherwise run into the next one's ("a<br>b" reads "ab").
  const TITLE_BREAKS = "br, p, li, h1, h2, h3, h4, h5, h6, pre, blockquote, td, th, hr";

  // A title is one line of plain text. A first message is Markdown (`**bold**`, `code`, links,
  // lists): render it with the same parser as the answers and keep only its text. DOMParser's
  // document is inert (no scripts run, no images load), and the text is only set as textContent.
  function plainTitle(text) {
    let plain = String(text || "").replace(/\[sim:[^\]]*\]\s*/g, "");
    if (markdown) {
      try {
        const doc = new DOMParser().parseFromString(markdown.parse(plain), "text/html");
        doc.querySelectorAll("img").forEach((img) => img.replaceWith(img.alt));
        doc.querySelectorAll(TITLE_BREAKS).forEach((node) => node.after(" "));
        plain = doc.body.textContent;
      } catch (error) {
        // keep the text as typed
      }
    }
    return plain.replace(/\s+/g, " ").trim().slice(0, TITLE_CHARS);
  }

  function loadTitles() {
    try {
      const stored = JSON.parse(localStorage.getItem(STORAGE.titles) || "{}");
      // Titles saved by earlier versions of this page may still hold Markdown.
      return Object.fromEntries(Object.entries(stored).map(([id, title]) => [id, plainTitle(title)]));
    } catch (error) {
      return {};
    }
  }

  const titles = loadTitles();

  function saveTitle(sessionId, text) {
    if (titles[sessionId]) return;
    titles[sessionId] = plainTitle(text) || text.slice(0, TITLE_CHARS);
    try {
      localStorage.setItem(STORAGE.titles, JSON.stringify(titles));
    } catch (error) {
      // storage full or disabled: titles are a nicety
    }
  }

  // Titles the server gives (if its session API has them) win over this browser's own.
  const serverTitles = {};

  function titleFor(sessionId) {
    return serverTitles[sessionId] || titles[sessionId] || `Chat ${sessionId.slice(-6)}`;
  }

  function newSessionId() {
    const bytes = new Uint8Array(9);
    crypto.getRandomValues(bytes);
    return "web-" + Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  }

  function relativeTime(iso) {
    const then = new Date(iso).getTime();
    if (Number.isNaN(then)) return "";
    const seconds = Math.round((Date.now() - then) / 1000);
    if (seconds < 45) return "just now";
    const minutes = Math.round(seconds / 60);
    if (minutes < 60) return `${minutes} min ago`;
    const hours = Math.round(minutes / 60);
    if (hours < 24) return `${hours} h ago`;
    const days = Math.round(hours / 24);
    if (days < 7) return `${days} d ago`;
    return new Date(then).toLocaleDateString();
  }

  // --- API ----------------------------------------------------------------------------------------

  async function api(path, { method = "GET", body } = {}) {
    const headers = { Accept: "application/json" };
    if (method !== "GET") headers["X-CSRFToken"] = csrfToken();
    const init = { method, headers, credentials: "same-origin", cache: "no-store" };
    if (body !== undefined) {
      headers["Content-Type"] = "application/json";
      init.body = JSON.stringify(body);
    }
    const response = await fetch(path, init);
    if (response.status === 204) return null;
    const payload = await response.json().catch(() => ({}));
    if (!response.ok) {
      const error = new Error(payload.detail || `The server answered ${response.status}.`);
      error.code = payload.code;
      error.status = response.status;
      if (response.status === 401) showSignInBanner();
      throw error;
    }
    return payload;
  }

  async function apiAllPages(path, maxPages = 20) {
    let results = [];
    let next = path;
    for (let page = 0; next && page < maxPages; page += 1) {
      const payload = await api(next);
      if (Array.isArray(payload)) return payload;
      results = results.concat(payload.results || []);
      next = payload.next ? new URL(payload.next, location.href).pathname + new URL(payload.next, location.href).search : null;
    }
    return results;
  }

  // --- the assistant message ----------------------------------------------------------------------

  class AssistantMessage {
    constructor({ text = "" } = {}) {
      this.node = make("article", "msg msg-assistant");
      const avatar = make("div", "avatar");
      avatar.appendChild(svgIcon("bot"));
      this.body = make("div", "msg-body");
      this.reasoning = make("details", "reasoning");
      this.reasoning.hidden = true;
      this.reasoningSummary = make("summary", "", "Reasoning");
      this.reasoningText = make("div", "reasoning-text");
      this.reasoning.append(this.reasoningSummary, this.reasoningText);
      this.answer = make("div", "answer markdown");
      this.typing = make("div", "typing");
      this.typing.setAttribute("aria-label", "The bot is writing");
      this.typing.append(make("span"), make("span"), make("span"));
      this.notice = make("div", "notice");
      this.notice.hidden = true;
      this.meta = make("div", "msg-meta");
      this.followUps = make("div", "follow-ups");
      this.body.append(this.reasoning, this.answer, this.typing, this.notice, this.meta, this.followUps);
      this.node.append(avatar, this.body);
      this.text = text;
      this.renderQueued = false;
      if (text) renderMarkdown(this.answer, text);
      this.setStatus(text ? "completed" : "waiting");
    }

    setStatus(status) {
      this.status = status;
      this.node.dataset.status = status;
      // Screen readers announce the answer once it is whole, not every token.
      this.node.setAttribute("aria-busy", String(status === "waiting" || status === "streaming" || status === "retrying"));
      this.typing.hidden = !(status === "waiting" || (status === "streaming" && this.text === ""));
    }

    reset() {
      this.text = "";
      this.answer.replaceChildren();
      this.reasoning.hidden = true;
      this.reasoning.open = false;
      this.reasoningText.textContent = "";
      this.reasoningStarted = null;
      this.notice.hidden = true;
      this.notice.replaceChildren();
      this.meta.replaceChildren();
      this.followUps.replaceChildren();
      // A retried reply is another answer: rated afresh.
      if (this.commentForm) this.commentForm.remove();
      this.feedbackBar = null;
      this.messageId = null;
      this.chatId = null;
      this.feedback = null;
      delete this.node.dataset.rating;
      this.setStatus("waiting");
    }

    queueRender() {
      if (this.renderQueued) return;
      this.renderQueued = true;
      requestAnimationFrame(() => {
        this.renderQueued = false;
        renderMarkdown(this.answer, this.text);
        scrollToBottom();
      });
    }

    apply(event) {
      switch (event.type) {
        case "session":
          this.chatId = event.chat_id || this.chatId;
          this.setStatus("streaming");
          this.notice.hidden = true;
          break;
        case "resuming":
          this.notice.hidden = false;
          this.notice.className = "notice notice-retry";
          this.notice.textContent = "Connection lost; picking the reply up where it was…";
          break;
        case "reasoning":
          if (this.reasoning.hidden) {
            this.reasoning.hidden = false;
            this.reasoningStarted = performance.now();
            this.reasoningSummary.textContent = "Thinking…";
          }
          this.reasoningText.textContent += event.content;
          scrollToBottom();
          break;
        case "delta":
          this.endReasoning();
          this.text += event.content;
          this.notice.hidden = true;
          this.setStatus("streaming");
          this.queueRender();
          break;
        case "follow_up":
          this.addFollowUp(event.content);
          break;
        case "completed":
          this.endReasoning();
          this.text = event.content;
          renderMarkdown(this.answer, this.text);
          this.usage = event.usage;
          break;
        default:
          break;
      }
    }

    endReasoning() {
      if (this.reasoningStarted != null) {
        const seconds = Math.max(1, Math.round((performance.now() - this.reasoningStarted) / 1000));
        this.reasoningSummary.textContent = `Reasoning · ${seconds} s`;
        this.reasoningStarted = null;
      }
    }

    addFollowUp(text) {
      const chip = make("button", "chip", text);
      chip.type = "button";
      chip.addEventListener("click", () => sendMessage(text));
      this.followUps.appendChild(chip);
    }

    showRetrying(result, delayMs, onRetryNow) {
      this.setStatus("retrying");
      this.notice.hidden = false;
      this.notice.className = "notice notice-retry";
      const text = make("span");
      const now = make("button", "link-button", "Retry now");
      now.type = "button";
      now.addEventListener("click", onRetryNow);
      this.notice.replaceChildren(text, now);
      const until = Date.now() + delayMs;
      let label = result.code === "rate_limited" || result.code === "upstream_rate_limited" ? "Rate limited." : result.detail || "";
      if (label && !/[.!?…]$/.test(label)) label += ".";
      const tick = () => {
        const left = Math.max(0, Math.ceil((until - Date.now()) / 1000));
        text.textContent = `${label} Retrying in ${left} s… `;
        if (left > 0 && this.status === "retrying") this.countdown = setTimeout(tick, 250);
      };
      clearTimeout(this.countdown);
      tick();
    }

    finish(result, { onRetry, transportName } = {}) {
      clearTimeout(this.countdown);
      this.endReasoning();
      if (this.renderQueued || this.text) renderMarkdown(this.answer, this.text);
      this.renderQueued = false;
      this.notice.hidden = true;
      if (result.outcome === "completed") {
        this.setStatus("completed");
        this.addMeta(transportName);
      } else if (result.outcome === "stopped") {
        this.setStatus("stopped");
        const badge = make("span", "stopped-badge", "Stopped");
        this.meta.replaceChildren(badge);
        if (!this.text) this.answer.replaceChildren(make("p", "muted", "Stopped before the bot answered."));
      } else {
        this.setStatus("error");
        this.showError(result, onRetry);
      }
    }

    showError(result, onRetry) {
      this.notice.hidden = false;
      this.notice.className = "notice notice-error";
      const icon = svgIcon("alert");
      const text = make("div", "notice-text");
      text.append(make("strong", "", this.text ? "The reply was cut short. " : "No reply. "), result.detail || "Something went wrong.");
      if (result.code) text.append(" ", make("code", "error-code", result.code));
      this.notice.replaceChildren(icon, text);
      if (result.code === "unauthenticated") {
        const link = make("a", "btn btn-small", "Sign in");
        link.href = loginUrl;
        this.notice.appendChild(link);
        showSignInBanner();
      } else if (onRetry) {
        const retry = make("button", "btn btn-small retry-button");
        retry.type = "button";
        retry.append(svgIcon("retry"), "Retry");
        retry.addEventListener("click", onRetry);
        this.notice.appendChild(retry);
      }
    }

    addMeta(transportName) {
      this.meta.replaceChildren();
      if (this.usage && this.usage.total_tokens) this.meta.append(make("span", "", `${this.usage.total_tokens} tokens`));
      if (transportName) this.meta.append(make("span", "", transportName === "ws" ? "WebSocket" : "SSE"));
      const copy = make("button", "icon-button copy-button");
      copy.type = "button";
      copy.title = "Copy answer";
      copy.setAttribute("aria-label", "Copy answer");
      copy.appendChild(svgIcon("copy"));
      copy.addEventListener("click", async () => {
        try {
          await navigator.clipboard.writeText(this.text);
          toast("Copied to the clipboard", "info");
        } catch (error) {
          toast("Could not copy: the browser refused access to the clipboard.");
        }
      });
      this.meta.append(copy);
      this.addFeedback();
    }

    /**
     * Thumbs up and down, and an optional comment, on this answer (docs/api.md §15). `messageId` is
     * the answer's id in the session's messages: known for history, looked up by the reply's chat id
     * for an answer that was just streamed. Clicking the pressed thumb takes the rating back.
     */
    addFeedback({ messageId = null, feedback = null } = {}) {
      if (this.feedbackBar) return;
      if (messageId != null) this.messageId = messageId;
      this.feedback = feedback;
      const bar = make("span", "feedback");
      const button = (rating, label) => {
        const node = make("button", "icon-button feedback-button");
        node.type = "button";
        node.dataset.rating = rating;
        node.title = label;
        node.setAttribute("aria-label", label);
        node.appendChild(svgIcon(rating === "up" ? "thumb-up" : "thumb-down"));
        node.addEventListener("click", () => this.rate(this.feedback && this.feedback.rating === rating ? null : rating));
        return node;
      };
      this.thumbs = [button("up", "Good answer"), button("down", "Bad answer")];
      this.commentNote = make("span", "feedback-note");
      bar.append(...this.thumbs, this.commentNote);
      this.meta.append(bar);
      this.commentForm = make("form", "feedback-comment");
      this.commentForm.hidden = true;
      this.commentInput = make("input");
      this.commentInput.type = "text";
      this.commentInput.maxLength = 2000;
      this.commentInput.placeholder = "What was good or bad about this answer? (optional)";
      this.commentInput.setAttribute("aria-label", "Comment on this answer");
      const save = make("button", "btn btn-small", "Save comment");
      save.type = "submit";
      this.commentForm.append(this.commentInput, save);
      this.commentForm.addEventListener("submit", (event) => {
        event.preventDefault();
        if (this.feedback) this.rate(this.feedback.rating, this.commentInput.value.trim());
      });
      this.meta.after(this.commentForm);
      this.feedbackBar = bar;
      this.showFeedback();
    }

    showFeedback() {
      const rating = this.feedback ? this.feedback.rating : null;
      this.node.dataset.rating = rating || "";
      for (const thumb of this.thumbs) thumb.setAttribute("aria-pressed", String(thumb.dataset.rating === rating));
      this.commentNote.textContent = this.feedback && this.feedback.comment ? `“${this.feedback.comment}”` : "";
      if (!rating) this.commentForm.hidden = true;
    }

    async resolveMessageId() {
      if (this.messageId != null) return this.messageId;
      const sessionId = this.sessionId || state.sessionId;
      const messages = await apiAllPages(`/api/sessions/${encodeURIComponent(sessionId)}/messages`);
      const answer = messages.filter((message) => message.type === "answer" && message.chat_id === this.chatId).pop();
      if (!answer) throw new Error("this answer is not stored yet");
      this.messageId = answer.id;
      return this.messageId;
    }

    async rate(rating, comment) {
      const commentSaved = comment !== undefined;
      if (!commentSaved) comment = this.feedback ? this.feedback.comment : "";
      try {
        const path = `/api/messages/${encodeURIComponent(await this.resolveMessageId())}/feedback`;
        if (rating) {
          const stored = await api(path, { method: "POST", body: { rating, comment } });
          this.feedback = stored.feedback;
        } else {
          await api(path, { method: "DELETE" });
          this.feedback = null;
        }
      } catch (error) {
        toast(`Could not save the rating: ${error.message}`);
        return;
      }
      this.showFeedback();
      if (rating && !commentSaved) {
        // A thumb was clicked: offer the comment (the saved one, to edit); a saved comment closes it.
        this.commentInput.value = this.feedback.comment;
        this.commentForm.hidden = false;
        this.commentInput.focus();
      } else {
        this.commentForm.hidden = true;
      }
    }
  }

  function userMessage(text, attachments = []) {
    const node = make("article", "msg msg-user");
    const column = make("div", "msg-user-column");
    if (attachments.length) column.appendChild(attachmentList(attachments));
    if (text) column.appendChild(make("div", "bubble", text)); // always text, never HTML
    node.appendChild(column);
    return node;
  }

  // --- attachments ----------------------------------------------------------------------------------

  // Thumbnails of images uploaded from this page, by file id (the server keeps no image URL).
  const previews = new Map();

  function formatBytes(bytes) {
    if (bytes == null) return "";
    if (bytes < 1024) return `${bytes} B`;
    if (bytes < 1024 * 1024) return `${(bytes / 1024).toFixed(bytes < 10240 ? 1 : 0)} KB`;
    return `${(bytes / (1024 * 1024)).toFixed(1)} MB`;
  }

  /** Sent attachments, as the session API describes them: {file_id, file_name, content_type, bytes} or {url, type}. */
  function attachmentList(attachments) {
    const list = make("div", "msg-attachments");
    for (const attachment of attachments) {
      const isImage = attachment.file_id ? (attachment.content_type || "").startsWith("image/") : attachment.type === "image";
      const src = attachment.file_id ? previews.get(attachment.file_id) : attachment.url;
      const name = attachment.file_id ? attachment.file_name : attachment.url;
      const item = make("div", "attachment");
      item.title = name;
      if (isImage && src) {
        const image = make("img", "attachment-thumb");
        image.src = src;
        image.alt = name;
        image.loading = "lazy";
        image.referrerPolicy = "no-referrer";
        item.appendChild(image);
        item.classList.add("attachment-image");
      } else {
        item.appendChild(svgIcon("file"));
        const label = make("span", "attachment-text");
        label.append(make("span", "attachment-name", name));
        const details = attachment.file_id ? formatBytes(attachment.bytes) : attachment.type;
        if (details) label.append(make("span", "attachment-size", details));
        item.appendChild(label);
      }
      list.appendChild(item);
    }
    return list;
  }

  // Files chosen for the next message: each uploads at once, showing its progress.
  const pending = [];

  function uploadRefusal(status, payload, file) {
    const name = `“${file.name || "pasted image"}”`;
    if (status === 413) return `${name} is too large. ${payload.detail || ""}`.trim();
    if (status === 415) return `${name} can't be attached: ${payload.detail || "this type of file is not accepted."}`;
    if (status === 429) return `Too many uploads; wait a moment and try ${name} again.`;
    if (status === 401) {
      showSignInBanner();
      return `Sign in to attach ${name}.`;
    }
    return `Could not upload ${name}: ${payload.detail || `the server answered ${status || "nothing"}.`}`;
  }

  function renderTray() {
    el.tray.hidden = pending.length === 0;
    el.form.classList.toggle("has-attachments", pending.length > 0);
    el.tray.replaceChildren(
      ...pending.map((entry) => {
        const item = make("div", `tray-item tray-${entry.status}`);
        item.dataset.status = entry.status;
        item.title = entry.file.name;
        if (entry.preview) {
          const image = make("img", "tray-thumb");
          image.src = entry.preview;
          image.alt = entry.file.name;
          item.appendChild(image);
        } else {
          item.appendChild(svgIcon("file"));
        }
        const text = make("span", "tray-text");
        text.append(make("span", "tray-name", entry.file.name || "pasted image"));
        text.append(make("span", "tray-size", entry.status === "uploading" ? `${Math.round(entry.progress * 100)}%` : formatBytes(entry.file.size)));
        item.appendChild(text);
        if (entry.status === "uploading") {
          const bar = make("progress", "tray-progress");
          bar.max = 1;
          bar.value = entry.progress;
          bar.setAttribute("aria-label", `Uploading ${entry.file.name}`);
          item.appendChild(bar);
        }
        const remove = make("button", "icon-button tray-remove");
        remove.type = "button";
        remove.setAttribute("aria-label", `Remove ${entry.file.name}`);
        remove.appendChild(svgIcon("x"));
        remove.addEventListener("click", () => removePending(entry));
        item.appendChild(remove);
        return item;
      }),
    );
  }

  function removePending(entry) {
    const index = pending.indexOf(entry);
    if (index >= 0) pending.splice(index, 1);
    if (entry.request) entry.request.abort();
    if (entry.preview && !entry.fileId) URL.revokeObjectURL(entry.preview);
    renderTray();
  }

  function uploadFile(file) {
    const entry = { file, status: "uploading", progress: 0, fileId: null, preview: null, request: null };
    if (file.type.startsWith("image/")) entry.preview = URL.createObjectURL(file);
    pending.push(entry);
    renderTray();
    const form = new FormData();
    form.append("file", file, file.name || `pasted-image.${(file.type.split("/")[1] || "png").replace("jpeg", "jpg")}`);
    // XMLHttpRequest rather than fetch: only it reports upload progress.
    const request = new XMLHttpRequest();
    entry.request = request;
    request.open("POST", "/api/files");
    request.setRequestHeader("X-CSRFToken", csrfToken());
    request.setRequestHeader("Accept", "application/json");
    request.upload.addEventListener("progress", (event) => {
      if (!event.lengthComputable) return;
      entry.progress = event.loaded / event.total;
      renderTray();
    });
    request.addEventListener("load", () => {
      entry.request = null;
      let payload = {};
      try {
        payload = JSON.parse(request.responseText || "{}");
      } catch (error) {
        // not JSON: a proxy page
      }
      if (request.status === 201) {
        entry.status = "ready";
        entry.fileId = payload.file_id;
        entry.uploaded = payload;
        if (entry.preview) previews.set(payload.file_id, entry.preview);
      } else {
        toast(uploadRefusal(request.status, payload, file));
        removePending(entry);
        return;
      }
      renderTray();
    });
    request.addEventListener("error", () => {
      entry.request = null;
      toast(uploadRefusal(0, {}, file));
      removePending(entry);
    });
    request.send(form);
  }

  function attachFiles(files) {
    for (const file of files) uploadFile(file);
    el.input.focus();
  }

  el.attach.addEventListener("click", () => el.fileInput.click());
  el.fileInput.addEventListener("change", () => {
    attachFiles(Array.from(el.fileInput.files || []));
    el.fileInput.value = "";
  });
  document.addEventListener("paste", (event) => {
    const files = Array.from(event.clipboardData ? event.clipboardData.files : []);
    if (!files.length) return;
    event.preventDefault(); // an image pasted is attached, not inserted as its file name
    attachFiles(files);
  });
  let dragDepth = 0;
  const carriesFiles = (event) => Array.from(event.dataTransfer ? event.dataTransfer.types : []).includes("Files");
  document.addEventListener("dragenter", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth += 1;
    el.dropOverlay.hidden = false;
  });
  document.addEventListener("dragleave", (event) => {
    if (!carriesFiles(event)) return;
    dragDepth = Math.max(0, dragDepth - 1);
    if (!dragDepth) el.dropOverlay.hidden = true;
  });
  document.addEventListener("dragover", (event) => {
    if (carriesFiles(event)) event.preventDefault();
  });
  document.addEventListener("drop", (event) => {
    if (!carriesFiles(event)) return;
    event.preventDefault();
    dragDepth = 0;
    el.dropOverlay.hidden = true;
    attachFiles(Array.from(event.dataTransfer.files));
  });

  /** The attachments ready to send, taken out of the tray; null while one is still uploading. */
  function takeAttachments() {
    if (pending.some((entry) => entry.status === "uploading")) return null;
    const ready = pending.splice(0, pending.length);
    renderTray();
    return ready.map((entry) => entry.uploaded);
  }

  function divider(text) {
    return make("div", "divider", text);
  }

  // --- state ----------------------------------------------------------------------------------------

  const state = {
    sessionId: null,
    busy: false,
    retrying: false,
    handle: null,
    stopRequested: false,
    wakeRetry: null,
    transportName: "sse",
    transport: null,
  };

  const sse = new SseTransport({ inactivityMs });
  const ws = new WsTransport({ heartbeatMs: heartbeatSeconds * 1000, inactivityMs, onStatus: wsStatus });

  function setStatus(stateName, text) {
    el.status.dataset.state = stateName;
    el.status.querySelector(".status-text").textContent = text;
  }

  let wsCountdown = null;

  function wsStatus(stateName, extra) {
    clearInterval(wsCountdown);
    if (state.transportName !== "ws") return;
    if (stateName === "open") setStatus("ok", "Connected");
    else if (stateName === "connecting") setStatus("busy", "Connecting…");
    else if (stateName === "reconnecting") setStatus("busy", "Reconnecting…");
    else if (stateName === "unauthorized") {
      setStatus("error", "Not signed in");
      showSignInBanner();
    } else if (stateName === "waiting") {
      const until = Date.now() + extra.delayMs;
      const tick = () => setStatus("warn", `Offline · retrying in ${Math.max(0, Math.ceil((until - Date.now()) / 1000))} s`);
      tick();
      wsCountdown = setInterval(tick, 500);
    } else setStatus("ready", "Idle");
  }

  function sseStatus() {
    if (state.transportName !== "sse") return;
    if (!navigator.onLine) setStatus("warn", "Offline");
    else if (state.retrying) setStatus("warn", "Waiting to retry");
    else setStatus(state.busy ? "ok" : "ready", state.busy ? "Streaming" : "Ready");
  }

  function selectTransport(name) {
    state.transportName = name === "ws" ? "ws" : "sse";
    state.transport = state.transportName === "ws" ? ws : sse;
    try {
      localStorage.setItem(STORAGE.transport, state.transportName);
    } catch (error) {
      // private mode
    }
    document.querySelectorAll('input[name="transport"]').forEach((radio) => {
      radio.checked = radio.value === state.transportName;
    });
    body.dataset.transport = state.transportName;
    if (state.transportName === "ws") ws.activate();
    else {
      ws.deactivate();
      sseStatus();
    }
  }

  el.status.addEventListener("click", () => {
    if (state.transportName === "ws" && ws.state === "waiting") ws.reconnectNow();
  });
  window.addEventListener("online", () => {
    if (state.transportName === "sse") sseStatus();
  });
  window.addEventListener("offline", () => {
    if (state.transportName === "sse") sseStatus();
  });

  function setBusy(busy) {
    state.busy = busy;
    body.classList.toggle("is-busy", busy);
    el.send.hidden = busy;
    el.stop.hidden = !busy;
    document.querySelectorAll('input[name="transport"]').forEach((radio) => {
      radio.disabled = busy;
    });
    if (state.transportName === "sse") sseStatus();
  }

  function showEmpty(show) {
    el.empty.hidden = !show;
    el.thread.hidden = show;
  }

  function setTitle(text) {
    el.title.textContent = text;
    document.title = text === "New chat" ? "Chat" : `${text} · Chat`;
  }

  // --- sending --------------------------------------------------------------------------------------

  function sleepUnlessWoken(ms) {
    return new Promise((resolve) => {
      const timer = setTimeout(() => {
        state.wakeRetry = null;
        resolve("elapsed");
      }, ms);
      state.wakeRetry = (why) => {
        clearTimeout(timer);
        state.wakeRetry = null;
        resolve(why);
      };
    });
  }

  async function sendMessage(text, { retryInto, attachments = [] } = {}) {
    text = (text || "").trim();
    if ((!text && !attachments.length) || state.busy) return;
    if (!state.sessionId) {
      state.sessionId = newSessionId();
      setHash(state.sessionId);
    }
    saveTitle(state.sessionId, text || attachments.map((attachment) => attachment.file_name).join(", "));
    setTitle(titleFor(state.sessionId));
    showEmpty(false);
    el.thread.querySelectorAll(".follow-ups").forEach((node) => node.replaceChildren());

    let view = retryInto;
    if (view) view.reset();
    else {
      el.thread.appendChild(userMessage(text, attachments));
      view = new AssistantMessage();
      el.thread.appendChild(view.node);
    }
    view.sessionId = state.sessionId;
    scrollToBottom(true);
    setBusy(true);
    state.stopRequested = false;
    const transport = state.transport;
    // Resumable: a dropped connection or a reload picks the reply up where it was (docs/api.md §9).
    const requestBody = { session_id: state.sessionId, resumable: true };
    if (text) requestBody.message = text;
    if (attachments.length) {
      requestBody.attachments = attachments.map((attachment) =>
        attachment.file_id ? { file_id: attachment.file_id } : { url: attachment.url, type: attachment.type },
      );
    }
    let result;
    for (let attempt = 0; ; attempt += 1) {
      state.handle = transport.start(requestBody, (event) => {
        view.apply(event);
        if (event.type === "session") refreshSessions(); // a new conversation shows up at once
      });
      result = await state.handle.result;
      state.handle = null;
      const autoRetry =
        result.outcome === "error" &&
        !result.started &&
        AUTO_RETRY_CODES.has(result.code) &&
        attempt < MAX_AUTO_RETRIES &&
        !state.stopRequested;
      if (!autoRetry) break;
      // Honour Retry-After when the server gives one; otherwise back off exponentially with jitter.
      const delayMs = result.retryAfterMs != null ? result.retryAfterMs : backoffDelay(attempt, { baseMs: 1000, capMs: 20000 });
      view.showRetrying(result, delayMs, () => state.wakeRetry && state.wakeRetry("now"));
      state.retrying = true;
      sseStatus();
      const why = await sleepUnlessWoken(delayMs);
      state.retrying = false;
      sseStatus();
      if (why === "stop") {
        result = { outcome: "stopped", started: false };
        break;
      }
      view.setStatus("waiting");
      view.notice.hidden = true;
    }
    view.finish(result, {
      transportName: transport.name,
      onRetry: () => {
        if (state.busy) return;
        sendMessage(text, { retryInto: view, attachments });
      },
    });
    setBusy(false);
    scrollToBottom();
    refreshSessions();
    if (document.activeElement === document.body) el.input.focus();
  }

  /** Follow a reply that is still being written (the page was reloaded mid-reply) into `view`. */
  async function followReply(view) {
    const transport = state.transport;
    setBusy(true);
    state.stopRequested = false;
    state.handle = transport.resume(state.sessionId, (event) => view.apply(event));
    const result = await state.handle.result;
    state.handle = null;
    view.finish(result, { transportName: transport.name });
    setBusy(false);
    scrollToBottom();
    refreshSessions();
  }

  function stopReply() {
    if (!state.busy) return;
    state.stopRequested = true;
    if (state.wakeRetry) state.wakeRetry("stop");
    if (state.handle) state.handle.stop();
  }

  // --- composer -----------------------------------------------------------------------------------

  function autosize() {
    el.input.style.height = "auto";
    el.input.style.height = `${Math.min(el.input.scrollHeight, 220)}px`;
  }

  el.form.addEventListener("submit", (event) => {
    event.preventDefault();
    const text = el.input.value;
    if ((!text.trim() && !pending.length) || state.busy) return;
    const attachments = takeAttachments();
    if (attachments === null) {
      toast("Wait for the upload to finish before sending.", "info");
      return;
    }
    el.input.value = "";
    autosize();
    sendMessage(text, { attachments });
  });
  el.input.addEventListener("input", autosize);
  el.input.addEventListener("keydown", (event) => {
    if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
      event.preventDefault();
      el.form.requestSubmit();
    }
  });
  document.addEventListener("keydown", (event) => {
    if (event.key === "Escape" && state.busy && !el.dialog.open) stopReply();
  });
  el.stop.addEventListener("click", stopReply);
  document.querySelectorAll(".starter").forEach((button) => {
    button.addEventListener("click", () => sendMessage(button.dataset.prompt));
  });
  document.querySelectorAll('input[name="transport"]').forEach((radio) => {
    radio.addEventListener("change", () => radio.checked && selectTransport(radio.value));
  });

  // --- sessions -----------------------------------------------------------------------------------

  function setHash(sessionId) {
    const url = sessionId ? `#s=${encodeURIComponent(sessionId)}` : location.pathname + location.search;
    history.replaceState(null, "", url);
  }

  function hashSession() {
    const match = location.hash.match(/^#s=(.+)$/);
    return match ? decodeURIComponent(match[1]) : null;
  }

  function closeSidebar() {
    body.classList.remove("sidebar-open");
    el.scrim.hidden = true;
    el.menu.setAttribute("aria-expanded", "false");
  }

  el.menu.addEventListener("click", () => {
    const open = !body.classList.contains("sidebar-open");
    body.classList.toggle("sidebar-open", open);
    el.scrim.hidden = !open;
    el.menu.setAttribute("aria-expanded", String(open));
  });
  el.scrim.addEventListener("click", closeSidebar);

  let refreshing = null;
  let sessionPoll = null;

  async function refreshSessions() {
    if (refreshing) return refreshing;
    refreshing = (async () => {
      try {
        const payload = await api("/api/sessions");
        renderSessions(Array.isArray(payload) ? payload : payload.results || []);
      } catch (error) {
        if (error.status !== 401) console.warn("Could not load sessions", error);
        renderSessions([]);
      } finally {
        refreshing = null;
      }
    })();
    return refreshing;
  }

  function renderSessions(sessions) {
    el.sessions.replaceChildren();
    el.sessionsEmpty.hidden = sessions.length > 0;
    for (const session of sessions) {
      const id = session.session_id;
      if (session.title) serverTitles[id] = plainTitle(session.title);
      const item = make("li", "session");
      item.dataset.sessionId = id;
      if (id === state.sessionId) item.classList.add("active");
      const open = make("button", "session-open");
      open.type = "button";
      open.title = titleFor(id);
      open.append(make("span", "session-title", titleFor(id)));
      const count = session.message_count;
      const meta = `${relativeTime(session.last_activity)} · ${count} message${count === 1 ? "" : "s"}`;
      const metaLine = make("span", "session-meta", meta);
      if (session.status === "busy") {
        item.classList.add("is-running");
        metaLine.prepend(make("span", "session-running", "replying…"), " · ");
      }
      open.append(metaLine);
      open.addEventListener("click", () => {
        closeSidebar();
        openSession(id);
      });
      const clear = make("button", "icon-button session-clear");
      clear.type = "button";
      clear.title = "Clear context";
      clear.setAttribute("aria-label", `Clear ${titleFor(id)}`);
      clear.appendChild(svgIcon("eraser"));
      clear.addEventListener("click", () => clearSession(id));
      const remove = make("button", "icon-button session-delete");
      remove.type = "button";
      remove.title = "Delete";
      remove.setAttribute("aria-label", `Delete ${titleFor(id)}`);
      remove.appendChild(svgIcon("trash"));
      remove.addEventListener("click", () => deleteSession(id));
      const actions = make("div", "session-actions");
      actions.append(clear, remove);
      item.append(open, actions);
      el.sessions.appendChild(item);
    }
    // The open conversation may have been titled before the server's titles arrived (a reload).
    if (state.sessionId && serverTitles[state.sessionId]) setTitle(titleFor(state.sessionId));
    // While a reply runs (here, in another tab, or left running by a reload), look again soon.
    clearTimeout(sessionPoll);
    if (sessions.some((session) => session.status === "busy")) sessionPoll = setTimeout(refreshSessions, 3000);
  }

  function markActive() {
    el.sessions.querySelectorAll(".session").forEach((item) => {
      item.classList.toggle("active", item.dataset.sessionId === state.sessionId);
    });
  }

  function newChat() {
    if (state.busy) stopReply();
    state.sessionId = null;
    setHash(null);
    el.thread.replaceChildren();
    showEmpty(true);
    setTitle("New chat");
    markActive();
    closeSidebar();
    el.input.focus();
  }

  async function openSession(sessionId) {
    if (state.busy) {
      toast("Stop the current reply before switching conversations.", "info");
      return;
    }
    state.sessionId = sessionId;
    setHash(sessionId);
    setTitle(titleFor(sessionId));
    markActive();
    el.thread.replaceChildren();
    showEmpty(false);
    let messages;
    try {
      messages = await apiAllPages(`/api/sessions/${encodeURIComponent(sessionId)}/messages`);
    } catch (error) {
      if (error.status === 404) {
        toast("That conversation no longer exists.");
        newChat();
        return;
      }
      toast(`Could not load the conversation: ${error.message}`);
      return;
    }
    renderHistory(messages);
  }

  function renderHistory(messages) {
    el.thread.replaceChildren();
    if (!messages.length) {
      el.thread.appendChild(divider("No messages in the current context."));
      return;
    }
    let lastAnswer = null;
    let pendingQuestion = null;
    const closeQuestion = () => {
      if (!pendingQuestion) return;
      // A question whose reply produced no answer: say how it ended.
      const view = new AssistantMessage();
      const question = pendingQuestion.content;
      const attachments = pendingQuestion.attachments || [];
      view.finish(historyResult(pendingQuestion.status), {
        onRetry: () => !state.busy && sendMessage(question, { retryInto: view, attachments }),
      });
      el.thread.appendChild(view.node);
      pendingQuestion = null;
    };
    for (const message of messages) {
      if (message.role === "user") {
        closeQuestion();
        el.thread.appendChild(userMessage(message.content, message.attachments || []));
        pendingQuestion = message;
      } else if (message.type === "answer") {
        const view = new AssistantMessage({ text: message.content });
        const question = pendingQuestion ? pendingQuestion.content : null;
        const attachments = pendingQuestion ? pendingQuestion.attachments || [] : [];
        if (message.status && message.status !== "completed") {
          view.finish(historyResult(message.status), {
            onRetry: question !== null ? () => !state.busy && sendMessage(question, { retryInto: view, attachments }) : null,
          });
        }
        pendingQuestion = null;
        view.sessionId = state.sessionId;
        view.chatId = message.chat_id;
        view.addFeedback({ messageId: message.id, feedback: message.feedback });
        el.thread.appendChild(view.node);
        lastAnswer = view;
      } else if (message.type === "follow_up" && lastAnswer) {
        lastAnswer.addFollowUp(message.content);
      }
    }
    if (pendingQuestion && pendingQuestion.status === "in_progress") {
      // Still being written (this page was reloaded, or another tab asked): follow it live.
      const view = new AssistantMessage();
      el.thread.appendChild(view.node);
      pendingQuestion = null;
      followReply(view);
    }
    closeQuestion();
    el.thread.querySelectorAll(".msg-assistant").forEach((node, index, all) => {
      if (index < all.length - 1) node.querySelector(".follow-ups").replaceChildren();
    });
    scrollToBottom(true);
  }

  function historyResult(status) {
    if (status === "cancelled") return { outcome: "stopped", started: true };
    if (status === "completed") return { outcome: "completed" };
    if (status === "interrupted")
      return { outcome: "error", code: "interrupted", detail: "The server restarted while writing this reply.", started: true };
    return { outcome: "error", code: "failed", detail: "This reply failed.", started: true };
  }

  async function clearSession(sessionId) {
    const ok = await confirmAction({
      title: "Clear this conversation's context?",
      text: "The bot forgets what was said so far; the next message starts fresh. The transcript stays on the server for review.",
      action: "Clear context",
    });
    if (!ok) return;
    try {
      await api(`/api/sessions/${encodeURIComponent(sessionId)}/clear`, { method: "POST" });
    } catch (error) {
      toast(error.code === "session_busy" ? "A reply is still being written; stop it first." : `Could not clear: ${error.message}`);
      return;
    }
    if (sessionId === state.sessionId) {
      el.thread.replaceChildren(divider("Context cleared. The next message starts a new conversation."));
      showEmpty(false);
    }
    toast("Context cleared.", "info");
    refreshSessions();
  }

  async function deleteSession(sessionId) {
    const ok = await confirmAction({
      title: "Delete this conversation?",
      text: "The conversation and all its messages are deleted for good.",
      action: "Delete",
    });
    if (!ok) return;
    try {
      await api(`/api/sessions/${encodeURIComponent(sessionId)}`, { method: "DELETE" });
    } catch (error) {
      if (error.status !== 404) {
        toast(error.code === "session_busy" ? "A reply is still being written; stop it first." : `Could not delete: ${error.message}`);
        return;
      }
    }
    delete titles[sessionId];
    try {
      localStorage.setItem(STORAGE.titles, JSON.stringify(titles));
    } catch (error) {
      // ignore
    }
    if (sessionId === state.sessionId) newChat();
    toast("Conversation deleted.", "info");
    refreshSessions();
  }

  $("new-chat").addEventListener("click", newChat);

  // --- start ----------------------------------------------------------------------------------------

  let preferred = "sse";
  try {
    preferred = localStorage.getItem(STORAGE.transport) || "sse";
  } catch (error) {
    // private mode
  }
  selectTransport(new URLSearchParams(location.search).get("transport") || preferred);
  showEmpty(true);
  const initial = hashSession();
  refreshSessions();
  if (initial) openSession(initial);
  el.input.focus();

  // For tests and the curious: the page's state, read-only.
  window.chatPage = {
    get sessionId() {
      return state.sessionId;
    },
    get busy() {
      return state.busy;
    },
    get transport() {
      return state.transportName;
    },
    get wsState() {
      return ws.state;
    },
  };
})();
