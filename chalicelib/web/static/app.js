// CSV Opener's web page. Plain JavaScript, no build step, no third-party code.
//
// Safety rules kept throughout: everything that comes from a CSV, the model or the API is put on
// the page with textContent (never parsed as HTML), and the key lives in sessionStorage only.
"use strict";

(() => {
  const SCRIPT = document.currentScript;
  // The page and the API share a base: "/" under `chalice local`, "/api/" behind API Gateway.
  const BASE = new URL("..", SCRIPT ? SCRIPT.src : window.location.href);
  const KEY_STORAGE = "csv-opener-key";
  const POLL_MS = 1000;
  const RESULTS_PAGE = 20;
  const JOBS_PAGE = 10;
  const ETA_WINDOW_MS = 60000;
  const ACTIVE = new Set(["ingesting", "processing"]);
  // The API's defaults for the quality options: a field left at its default is not sent.
  const QUALITY_DEFAULTS = { grounding: "strict", min_words: 8, max_words: 40, language: "auto" };
  const WORD_LIMITS = [1, 200];

  const $ = (id) => document.getElementById(id);
  const el = {};
  [
    "who", "who-text", "change-key", "key-section", "key-form", "key-input", "key-error", "app", "error",
    "notice", "drop-zone", "file-input", "direct-limit", "upload-progress-box", "upload-progress",
    "upload-progress-label", "upload-progress-text", "summary-section", "summary-file", "summary-column",
    "summary-rows", "summary-invalid", "summary-later", "column-box", "column-select", "column-apply",
    "invalid-box", "invalid-table", "invalid-more", "instructions", "batch-mode", "preview-button", "start-button",
    "preview-box", "preview-list", "preview-estimate", "job-section", "job-file", "job-status",
    "job-progress", "job-percent", "job-processed", "job-failed", "job-remaining", "job-eta", "job-calls", "job-error",
    "job-cost", "job-estimate",
    "download-button", "cancel-button", "retry-button", "new-button", "results-filter", "results-refresh",
    "results-table", "results-empty", "results-prev", "results-page", "results-next", "jobs-refresh",
    "jobs-table", "jobs-empty", "jobs-more", "summary-title", "job-title", "grounding-select", "min-words",
    "max-words", "language-input", "variants-select", "quality-box", "quality-verified", "quality-generic", "quality-duplicates",
    "quality-words", "quality-regenerated", "quality-reused", "quality-flagged", "quality-filter",
    "download-approved-button", "summary-why",
  ].forEach((id) => {
    el[id] = $(id);
    if (!el[id]) throw new Error(`The page has no element #${id}`);
  });

  const meta = document.querySelector('meta[name="csv-opener-max-direct-upload"]');
  const MAX_DIRECT = Number.parseInt(meta ? meta.content : "", 10) || 4669440;

  const state = {
    file: null,          // the File in hand (for a re-upload with another URL column)
    upload: null,        // the answer of POST /api/upload, or a presigned job's facts
    presigned: false,
    urlColumn: null,     // a URL column chosen on the page for a presigned job: sent with process
    job: null,           // the job shown in the progress section
    pollTimer: null,
    samples: [],         // {t, done} for the ETA
    jobsCursor: null,
    previewSupported: false,
    busy: false,
  };

  // ------------------------------------------------------------------ helpers

  class ApiError extends Error {
    constructor(status, code, message) {
      super(message);
      this.status = status;
      this.code = code;
    }
  }

  function show(node, visible) { node.hidden = !visible; }

  function setText(node, value) { node.textContent = value == null ? "" : String(value); }

  function formatBytes(n) {
    if (n < 1024) return `${n} bytes`;
    if (n < 1024 * 1024) return `${(n / 1024).toFixed(1)} KB`;
    return `${(n / (1024 * 1024)).toFixed(1)} MB`;
  }

  function formatNumber(n) { return Number(n || 0).toLocaleString("en-US"); }

  function formatDuration(seconds) {
    const s = Math.max(1, Math.round(seconds));
    if (s < 60) return `about ${s} s`;
    const m = Math.round(s / 60);
    if (m < 60) return `about ${m} min`;
    return `about ${Math.floor(m / 60)} h ${m % 60} min`;
  }

  function formatDate(iso) {
    if (!iso) return "";
    const d = new Date(iso);
    return Number.isNaN(d.getTime()) ? String(iso) : d.toLocaleString();
  }

  function apiUrl(path) { return new URL(path.replace(/^\/+/, ""), BASE).href; }

  function key() { return window.sessionStorage.getItem(KEY_STORAGE) || ""; }

  function authHeaders() { return { Authorization: `Bearer ${key()}` }; }

  function showError(message) {
    if (el.app.hidden && message) { // not signed in yet: say it beside the key field
      setText(el["key-error"], message);
      show(el["key-error"], true);
      return;
    }
    setText(el.error, message);
    show(el.error, Boolean(message));
  }

  function notify(message) { setText(el.notice, message); }

  /** The words of an API error: its error.message; never the raw JSON. */
  function errorFromBody(status, text) {
    let body = null;
    try { body = JSON.parse(text); } catch (_) { body = null; }
    if (body && body.error && typeof body.error.message === "string") {
      return new ApiError(status, String(body.error.code || ""), body.error.message);
    }
    if (status === 403 && body && typeof body.message === "string") {
      return new ApiError(status, "not_found", "This server does not offer that function.");
    }
    if (status === 413) return new ApiError(status, "too_large", "The file is too large for one request.");
    return new ApiError(status, "http_error", `The server answered with HTTP status ${status}.`);
  }

  /** Any failed call ends here: 401 goes back to the key prompt, the rest is shown in words. */
  function handleError(err) {
    if (err instanceof ApiError && err.status === 401) {
      askForKey(err.message || "The key was not accepted.");
      return;
    }
    showError(err && err.message ? err.message : String(err));
  }

  async function call(method, path, { json, query } = {}) {
    const url = new URL(apiUrl(path));
    Object.entries(query || {}).forEach(([k, v]) => {
      if (v !== null && v !== undefined && v !== "") url.searchParams.set(k, v);
    });
    const headers = authHeaders();
    const options = { method, headers, cache: "no-store" };
    if (json !== undefined) {
      headers["Content-Type"] = "application/json";
      options.body = JSON.stringify(json);
    }
    let response;
    try {
      response = await fetch(url.href, options);
    } catch (err) {
      throw new ApiError(0, "network", "Could not reach the API; check your connection and try again.");
    }
    const text = await response.text();
    if (!response.ok) throw errorFromBody(response.status, text);
    try {
      return text ? JSON.parse(text) : {};
    } catch (_) {
      throw new ApiError(response.status, "bad_answer", "The API answered something that is not JSON.");
    }
  }

  /** XMLHttpRequest, for the upload progress events fetch does not give. */
  function send(method, url, body, headers, onProgress) {
    return new Promise((resolve, reject) => {
      const xhr = new XMLHttpRequest();
      xhr.open(method, url);
      Object.entries(headers || {}).forEach(([k, v]) => xhr.setRequestHeader(k, v));
      if (onProgress) {
        xhr.upload.onprogress = (event) => {
          if (event.lengthComputable) onProgress(event.loaded, event.total);
        };
      }
      xhr.onload = () => resolve({ status: xhr.status, text: xhr.responseText, etag: xhr.getResponseHeader("ETag") });
      xhr.onerror = () => reject(new ApiError(0, "network", "The file could not be sent: the connection failed, "
        + "or the server refused this page (for uploads to storage, the bucket needs a CORS rule for this page)."));
      xhr.onabort = () => reject(new ApiError(0, "aborted", "The upload was stopped."));
      xhr.send(body);
    });
  }

  function setUploadProgress(label, loaded, total) {
    show(el["upload-progress-box"], true);
    setText(el["upload-progress-label"], label);
    const percent = total ? Math.round((100 * loaded) / total) : 0;
    el["upload-progress"].max = 100;
    el["upload-progress"].value = percent;
    setText(el["upload-progress-text"], `${formatBytes(loaded)} of ${formatBytes(total)} (${percent} %)`);
  }

  // ------------------------------------------------------------------ the key

  function askForKey(message) {
    show(el.error, false);
    stopPolling();
    window.sessionStorage.removeItem(KEY_STORAGE);
    show(el.app, false);
    show(el.who, false);
    show(el["key-section"], true);
    setText(el["key-error"], message || "");
    show(el["key-error"], Boolean(message));
    el["key-input"].value = "";
    el["key-input"].focus();
  }

  async function useKey(candidate) {
    window.sessionStorage.setItem(KEY_STORAGE, candidate);
    const answer = await call("GET", "api/account");
    const account = answer.account || {};
    const name = account.name || account.id || "your account";
    const role = account.key && account.key.role ? `, ${account.key.role} key` : "";
    setText(el["who-text"], `Account: ${name}${role}`);
    show(el.who, true);
    show(el["key-section"], false);
    show(el["key-error"], false);
    show(el.app, true);
    showError("");
    el["file-input"].focus(); // keyboard users go on from the file picker
    loadJobs(true);
  }

  el["key-form"].addEventListener("submit", (event) => {
    event.preventDefault();
    const candidate = el["key-input"].value.trim();
    if (!candidate) {
      setText(el["key-error"], "Paste your API key first.");
      show(el["key-error"], true);
      el["key-input"].focus();
      return;
    }
    useKey(candidate).catch(keyFailed);
  });

  function keyFailed(err) {
    if (err instanceof ApiError && err.status === 401) {
      askForKey(err.message || "The key was not accepted.");
      return;
    }
    show(el.app, false);
    show(el["key-section"], true);
    setText(el["key-error"], err && err.message ? err.message : String(err));
    show(el["key-error"], true);
  }

  el["change-key"].addEventListener("click", () => askForKey(""));

  // ------------------------------------------------------------------ upload

  /** The header of a CSV read in the browser (best effort: for a file too big to send directly,
   * whose columns the API learns only when the job starts). */
  async function localColumns(file) {
    let text = await file.slice(0, 65536).text();
    text = text.replace(/^\uFEFF/, "");
    const firstLine = text.split(/\r?\n/, 1)[0] || "";
    const delimiters = [",", ";", "\t", "|"];
    const delimiter = delimiters.reduce((best, d) => (firstLine.split(d).length > firstLine.split(best).length ? d : best), ",");
    const cells = [];
    let cell = "";
    let quoted = false;
    for (let i = 0; i < text.length; i += 1) {
      const c = text[i];
      if (quoted) {
        if (c === '"' && text[i + 1] === '"') { cell += '"'; i += 1; } else if (c === '"') { quoted = false; } else { cell += c; }
      } else if (c === '"') {
        quoted = true;
      } else if (c === delimiter) {
        cells.push(cell); cell = "";
      } else if (c === "\n" || c === "\r") {
        break;
      } else {
        cell += c;
      }
    }
    cells.push(cell);
    return cells.map((c) => c.trim()).filter((c) => c);
  }

  async function handleFile(file, urlColumn) {
    if (!file) return;
    if (state.busy) return;
    state.busy = true;
    showError("");
    notify("");
    state.file = file;
    try {
      if (file.size > MAX_DIRECT) {
        await presignedUpload(file, urlColumn);
      } else {
        await directUpload(file, urlColumn);
      }
    } catch (err) {
      handleError(err);
    } finally {
      state.busy = false;
      el["file-input"].value = "";
    }
  }

  async function directUpload(file, urlColumn) {
    const form = new FormData();
    form.append("file", file, file.name);
    if (urlColumn) form.append("url_column", urlColumn);
    const previous = state.upload && state.upload.job && state.upload.job.status === "pending" ? state.upload.job.id : null;
    setUploadProgress(`Uploading ${file.name}`, 0, file.size);
    const reply = await send("POST", apiUrl("api/upload"), form, authHeaders(),
      (loaded, total) => setUploadProgress(`Uploading ${file.name}`, loaded, total));
    if (reply.status === 413) {
      const err = errorFromBody(reply.status, reply.text);
      if (err.code === "use_presigned_upload") {
        await presignedUpload(file, urlColumn);
        return;
      }
      throw err;
    }
    if (reply.status !== 201) throw errorFromBody(reply.status, reply.text);
    setUploadProgress(`Uploaded ${file.name}`, file.size, file.size);
    const body = JSON.parse(reply.text);
    if (previous && previous !== body.job.id) discard(previous);
    state.presigned = false;
    showSummary(body, body.columns || []);
  }

  async function presignedUpload(file, urlColumn) {
    const previous = state.upload && state.upload.job && state.upload.job.status === "pending" ? state.upload.job.id : null;
    const columns = await localColumns(file).catch(() => []);
    const request = { file_name: file.name, size: file.size };  // the upload URL takes exactly this many bytes
    if (urlColumn) request.url_column = urlColumn;
    const created = await call("POST", "api/upload/url", { json: request });
    if (created.parts) {
      await multipartUpload(file, created, previous, columns);
      return;
    }
    const headers = created.headers || { "Content-Type": "text/csv" };
    const label = `Uploading ${file.name} to storage`;
    setUploadProgress(label, 0, file.size);
    const reply = await send(created.method || "PUT", created.upload_url, file, headers,
      (loaded, total) => setUploadProgress(label, loaded, total));
    if (reply.status < 200 || reply.status >= 300) {
      throw new ApiError(reply.status, "storage_error",
        `Storage refused the upload (HTTP ${reply.status}); the upload link may have expired, try again.`);
    }
    setUploadProgress(`Uploaded ${file.name} to storage`, file.size, file.size);
    if (previous && previous !== created.job.id) discard(previous);
    state.presigned = true;
    showSummary({
      job: created.job, url_column: urlColumn || null, columns, total_rows: null, invalid_rows: null, errors: [],
    }, columns);
  }

  // ------------------------------------------------------------------ big files by parts

  const PART_THREADS = 4;
  const PART_ATTEMPTS = 4;
  const PART_ROUNDS = 3;
  const sleep = (ms) => new Promise((resolve) => { window.setTimeout(resolve, ms); });

  /** A multipart upload: the parts go straight to S3 in parallel (PART_THREADS at once) with one
   * progress bar; a failed part is sent again with backoff; after each round the API says which
   * parts S3 holds (with fresh URLs for the rest), so a dropped connection resumes; then complete. */
  async function multipartUpload(file, created, previous, localCols) {
    const jobId = created.job.id;
    const label = `Uploading ${file.name} to storage`;
    const sent = new Map();  // part number -> bytes of it sent in its current attempt
    const etags = new Map();
    let stored = 0;          // bytes of the parts stored
    const progress = () => {
      let inFlight = 0;
      sent.forEach((n) => { inFlight += n; });
      setUploadProgress(label, Math.min(file.size, stored + inFlight), file.size);
    };
    const putPart = async (part) => {
      const start = (part.number - 1) * created.part_size;
      const blob = file.slice(start, start + part.size);
      let failure = null;
      for (let attempt = 1; attempt <= PART_ATTEMPTS; attempt += 1) {
        try {
          const reply = await send("PUT", part.url, blob, {}, (loaded) => { sent.set(part.number, loaded); progress(); });
          if (reply.status >= 200 && reply.status < 300 && reply.etag) {
            etags.set(part.number, reply.etag);
            sent.delete(part.number);
            stored += part.size;
            progress();
            return;
          }
          failure = new ApiError(reply.status, "storage_error", reply.status >= 200 && reply.status < 300
            ? "Storage stored a part but its ETag header is not visible to this page (the bucket's CORS rule must expose ETag)."
            : `Storage refused a part of the file (HTTP ${reply.status}).`);
        } catch (err) {
          failure = err;
        }
        sent.delete(part.number);
        progress();
        if (attempt < PART_ATTEMPTS) await sleep(Math.min(8000, 500 * 2 ** (attempt - 1)));
      }
      throw failure;
    };
    let todo = created.parts;
    setUploadProgress(label, 0, file.size);
    for (let round = 1; round <= PART_ROUNDS && todo.length; round += 1) {
      const queue = todo.slice();
      let failure = null;
      const worker = async () => {
        while (queue.length) {
          const part = queue.shift();
          try { await putPart(part); } catch (err) { failure = err; }
        }
      };
      await Promise.all(Array.from({ length: Math.min(PART_THREADS, queue.length) }, worker));
      const held = await call("GET", `api/upload/${encodeURIComponent(jobId)}/parts`);
      if (held.completed) break;
      etags.clear();
      stored = 0;
      held.uploaded.forEach((p) => { etags.set(p.number, p.etag); stored += p.size; });
      todo = held.parts;
      progress();
      if (todo.length && round === PART_ROUNDS) {
        throw failure || new ApiError(0, "storage_error", "Parts of the file could not be stored; try again.");
      }
      if (todo.length) notify(`${todo.length} part(s) not stored yet; resuming…`);
    }
    const parts = Array.from(etags.entries()).sort((a, b) => a[0] - b[0]).map(([number, etag]) => ({ number, etag }));
    const done = await call("POST", "api/upload/complete", { json: { job_id: jobId, parts } });
    notify("");
    setUploadProgress(`Uploaded ${file.name} to storage`, file.size, file.size);
    if (previous && previous !== jobId) discard(previous);
    state.presigned = true;
    const columns = done.columns || localCols;
    showSummary({
      job: done.job, url_column: done.url_column || null, url_choice: done.url_choice || null, columns,
      total_rows: null, invalid_rows: null, errors: [],
    }, columns);
  }

  /** A pending job replaced by a re-upload (another URL column): cancel it, quietly. */
  function discard(jobId) {
    call("POST", `api/upload/${encodeURIComponent(jobId)}/cancel`).catch(() => {});
  }

  el["file-input"].addEventListener("change", () => {
    const file = el["file-input"].files && el["file-input"].files[0];
    handleFile(file, null);
  });

  ["dragenter", "dragover"].forEach((type) => el["drop-zone"].addEventListener(type, (event) => {
    event.preventDefault();
    el["drop-zone"].classList.add("over");
  }));
  ["dragleave", "dragend"].forEach((type) => el["drop-zone"].addEventListener(type, () => {
    el["drop-zone"].classList.remove("over");
  }));
  el["drop-zone"].addEventListener("drop", (event) => {
    event.preventDefault();
    el["drop-zone"].classList.remove("over");
    const file = event.dataTransfer && event.dataTransfer.files && event.dataTransfer.files[0];
    handleFile(file, null);
  });
  // A file dropped next to the zone must not make the browser navigate away.
  window.addEventListener("dragover", (event) => event.preventDefault());
  window.addEventListener("drop", (event) => event.preventDefault());

  // ------------------------------------------------------------------ summary

  function tableRows(rows) {
    return rows.map((cells) => {
      const tr = document.createElement("tr");
      cells.forEach((cell) => {
        const td = document.createElement("td");
        if (cell instanceof Node) td.append(cell); else td.textContent = cell == null ? "" : String(cell);
        tr.append(td);
      });
      return tr;
    });
  }

  function fillTable(table, rows) {
    table.tBodies[0].replaceChildren(...tableRows(rows));
  }

  function showSummary(upload, columns) {
    state.upload = upload;
    const job = upload.job || {};
    setText(el["summary-file"], job.file_name || "");
    const later = state.presigned && upload.total_rows == null;
    state.urlColumn = null;
    setText(el["summary-column"], upload.url_column || (later ? "detected when the job starts" : ""));
    const choice = upload.url_choice;
    setText(el["summary-why"], choice && choice.why ? `(${choice.why})` : "");
    setText(el["summary-rows"], later ? "counted when the job starts" : formatNumber(upload.total_rows));
    setText(el["summary-invalid"], later ? "counted when the job starts" : formatNumber(upload.invalid_rows));
    show(el["summary-later"], later);

    const select = el["column-select"];
    // The other URL-like columns the API found come first, then every other column.
    const alternatives = (choice && choice.alternatives) || [];
    const ordered = [...alternatives.filter((name) => columns.includes(name)),
      ...columns.filter((name) => !alternatives.includes(name))];
    const options = ordered.map((name) => {
      const option = document.createElement("option");
      option.value = name;
      option.textContent = alternatives.includes(name) ? `${name} (URLs)` : name;
      option.selected = name === upload.url_column;
      return option;
    });
    if (!upload.url_column) {
      const auto = document.createElement("option");
      auto.value = "";
      auto.textContent = "(detect it)";
      auto.selected = true;
      options.unshift(auto);
    }
    select.replaceChildren(...options);
    show(el["column-box"], Boolean(state.file) && columns.length > 1);

    const errors = upload.errors || [];
    fillTable(el["invalid-table"], errors.map((e) => [e.row, e.value, e.message]));
    show(el["invalid-box"], errors.length > 0);
    const more = (upload.invalid_rows || 0) - errors.length;
    setText(el["invalid-more"], more > 0 ? `…and ${formatNumber(more)} more; every one is in the download with its reason.` : "");
    show(el["invalid-more"], more > 0);

    show(el["preview-box"], false);
    show(el["preview-button"], state.previewSupported);
    el["start-button"].disabled = false;
    show(el["summary-section"], true);
    el["summary-title"].scrollIntoView({ block: "nearest" });
  }

  el["column-apply"].addEventListener("click", () => {
    const column = el["column-select"].value;
    if (!column) return;
    if (!state.file) {
      showError("Choose the file again to use another column.");
      return;
    }
    if (state.presigned && state.upload && state.upload.job && state.upload.job.status === "pending") {
      // A file in storage is not sent again: the column goes with the start, which checks it.
      state.urlColumn = column;
      setText(el["summary-column"], column);
      setText(el["summary-why"], "(your choice; checked when the job starts)");
      return;
    }
    notify(`Checking the file again with the URL column “${column}”…`);
    handleFile(state.file, column);
  });

  // ------------------------------------------------------------------ quality options

  /** The start form's quality options that differ from the API's defaults, checked here so a
   * mistake is said in words before anything is sent. */
  function qualityOptions() {
    const options = {};
    const grounding = el["grounding-select"].value;
    if (grounding !== QUALITY_DEFAULTS.grounding) options.grounding = grounding;
    const limits = {};
    [["min_words", "min-words", "at least"], ["max_words", "max-words", "at most"]].forEach(([name, id, words]) => {
      const text = el[id].value.trim();
      const value = Number(text);
      if (!/^\d+$/.test(text) || value < WORD_LIMITS[0] || value > WORD_LIMITS[1]) {
        throw new Error(`Words ${words} must be a whole number from ${WORD_LIMITS[0]} to ${WORD_LIMITS[1]}.`);
      }
      limits[name] = value;
      if (value !== QUALITY_DEFAULTS[name]) options[name] = value;
    });
    if (limits.min_words > limits.max_words) throw new Error("The least words must not be more than the most words.");
    const language = el["language-input"].value.trim().toLowerCase();
    if (!/^(auto|[a-z]{2})$/.test(language)) {
      throw new Error("Language must be auto or a two-letter code such as de, fr or es.");
    }
    if (language !== QUALITY_DEFAULTS.language) options.language = language;
    const variants = Number(el["variants-select"].value);
    if (variants > 1) options.variants = variants;
    return options;
  }

  function resetQualityOptions() {
    el["grounding-select"].value = QUALITY_DEFAULTS.grounding;
    el["min-words"].value = String(QUALITY_DEFAULTS.min_words);
    el["max-words"].value = String(QUALITY_DEFAULTS.max_words);
    el["language-input"].value = QUALITY_DEFAULTS.language;
    el["variants-select"].value = "1";
  }

  /** A row's flags as labels (text only), separated by spaces for screen readers and copying. */
  function flagList(flags) {
    const box = document.createElement("span");
    (Array.isArray(flags) ? flags : []).forEach((flag, i) => {
      if (i > 0) box.append(" ");
      const label = document.createElement("span");
      label.className = "flag";
      label.textContent = String(flag);
      box.append(label);
    });
    return box;
  }

  function renderQuality(quality) {
    show(el["quality-box"], Boolean(quality));
    if (!quality) return;
    setText(el["quality-verified"], formatNumber(quality.verified));
    setText(el["quality-generic"], formatNumber(quality.generic));
    setText(el["quality-duplicates"], `${(100 * Number(quality.duplicate_rate || 0)).toFixed(1)} %`);
    setText(el["quality-words"], quality.median_words == null ? "–" : String(quality.median_words));
    setText(el["quality-regenerated"], formatNumber(quality.regenerated));
    setText(el["quality-reused"], formatNumber(quality.reused));
    const flagged = Object.entries(quality.flagged || {});
    setText(el["quality-flagged"], flagged.length
      ? flagged.map(([flag, n]) => `${flag} ${formatNumber(n)}`).join(", ") : "none");
  }

  // ------------------------------------------------------------------ preview

  async function detectPreview() {
    try {
      const response = await fetch(apiUrl("api/openapi.json"), { cache: "no-store" });
      if (!response.ok) return;
      const doc = await response.json();
      state.previewSupported = Object.keys((doc && doc.paths) || {}).some((p) => /^\/api\/jobs\/\{[^}]+\}\/preview$/.test(p));
    } catch (_) {
      state.previewSupported = false;
    }
    if (state.upload) show(el["preview-button"], state.previewSupported);
  }

  el["preview-button"].addEventListener("click", async () => {
    if (!state.upload || !state.upload.job) return;
    showError("");
    el["preview-button"].disabled = true;
    notify("Asking for a few openers…");
    try {
      const body = { rows: 3 };
      const instructions = el.instructions.value.trim();
      if (instructions) body.instructions = instructions;
      Object.assign(body, qualityOptions());
      const answer = await call("POST", `api/jobs/${encodeURIComponent(state.upload.job.id)}/preview`, { json: body });
      const items = (answer.previews || []).map((p) => {
        const li = document.createElement("li");
        const url = document.createElement("span");
        url.className = "url";
        url.textContent = p.url || "";
        const opener = document.createElement("p");
        opener.textContent = p.opener || p.error || "";
        li.append(url, opener);
        if (p.reused) {
          const reused = document.createElement("p");
          reused.className = "evidence";
          reused.textContent = "Reused from an earlier job (no call, no cost).";
          li.append(reused);
        }
        if (Array.isArray(p.quality) && p.quality.length) li.append(flagList(p.quality));
        (Array.isArray(p.variants) ? p.variants.slice(1) : []).forEach((variant, i) => {
          const other = document.createElement("p");
          other.className = "variant";
          other.textContent = `Variant ${i + 2}: ${variant && variant.opener ? variant.opener : ""}`;
          li.append(other);
        });
        if (p.evidence) {
          const evidence = document.createElement("p");
          evidence.className = "evidence";
          evidence.textContent = `Rests on: ${p.evidence}`;
          li.append(evidence);
        }
        return li;
      });
      el["preview-list"].replaceChildren(...items);
      const estimate = answer.estimate || {};
      const batch = estimate.batch_cost_usd != null ? `, $${Number(estimate.batch_cost_usd).toFixed(2)} in batch mode` : "";
      setText(el["preview-estimate"], estimate.cost_usd != null
        ? `Estimated cost for the whole file: $${Number(estimate.cost_usd).toFixed(2)}${batch} (${formatNumber(estimate.urls)} URLs).` : "");
      show(el["preview-box"], true);
      notify("");
    } catch (err) {
      if (err instanceof ApiError && (err.status === 403 || err.status === 404) && err.code !== "job_not_found") {
        state.previewSupported = false;
        show(el["preview-button"], false);
        notify("Previews are not available on this server.");
      } else {
        handleError(err);
      }
    } finally {
      el["preview-button"].disabled = false;
    }
  });

  // ------------------------------------------------------------------ start

  el["start-button"].addEventListener("click", async () => {
    if (!state.upload || !state.upload.job || state.busy) return;
    showError("");
    el["start-button"].disabled = true;
    notify("Starting…");
    try {
      const body = { job_id: state.upload.job.id };
      const instructions = el.instructions.value.trim();
      if (instructions) body.instructions = instructions;
      if (el["batch-mode"].checked) body.mode = "batch";
      if (state.urlColumn) body.url_column = state.urlColumn;
      Object.assign(body, qualityOptions());
      const answer = await call("POST", "api/upload/process", { json: body });
      const reusedRows = answer.estimate && answer.estimate.reused_rows;
      notify(`Started: ${formatNumber(answer.job.total_rows)} URLs in ${formatNumber(answer.chunks)} chunk(s)` +
        (reusedRows ? `; ${formatNumber(reusedRows)} reused from earlier jobs (no call).` : "."));
      state.upload = null;
      show(el["summary-section"], false);
      openJob(answer.job);
      loadJobs(true);
    } catch (err) {
      notify("");
      el["start-button"].disabled = false;
      if (state.presigned && err instanceof ApiError && err.status === 400) {
        // The stored file failed its check: the job is failed; another column means a new upload.
        showError(`${err.message} You can pick another URL column and upload again.`);
        state.upload.job.status = "failed";
        return;
      }
      handleError(err);
    }
  });

  // ------------------------------------------------------------------ the job

  function stopPolling() {
    if (state.pollTimer) window.clearTimeout(state.pollTimer);
    state.pollTimer = null;
  }

  function schedulePoll() {
    stopPolling();
    state.pollTimer = window.setTimeout(poll, POLL_MS);
  }

  async function poll() {
    state.pollTimer = null;
    if (!state.job) return;
    const id = state.job.id;
    try {
      const answer = await call("GET", `api/jobs/${encodeURIComponent(id)}`);
      if (!state.job || state.job.id !== id) return;
      const before = state.job.status;
      renderJob(answer.job);
      loadResults(); // while the job runs its rows change (a regeneration's too), whatever the page shown
      if (answer.job.status !== before) loadJobs(true);
    } catch (err) {
      handleError(err);
      if (err instanceof ApiError && err.status === 401) return;
    }
    if (state.job && state.job.id === id && ACTIVE.has(state.job.status)) schedulePoll();
  }

  function openJob(job) {
    stopPolling();
    state.job = job;
    state.samples = [];
    review.reset();
    show(el["job-section"], true);
    renderJob(job);
    loadResults();
    if (ACTIVE.has(job.status)) schedulePoll();
    el["job-title"].scrollIntoView({ block: "nearest" });
  }

  function eta(job) {
    const total = job.total_rows || 0;
    const done = (job.processed_rows || 0) + (job.failed_rows || 0);
    if (!ACTIVE.has(job.status)) return "–";
    if (job.mode === "batch") return "within 24 hours (batch mode)";
    const now = Date.now();
    state.samples.push({ t: now, done });
    while (state.samples.length > 2 && now - state.samples[0].t > ETA_WINDOW_MS) state.samples.shift();
    const first = state.samples[0];
    const rate = (done - first.done) / Math.max(1, now - first.t); // rows per ms
    if (rate <= 0) return "estimating…";
    return formatDuration((total - done) / rate / 1000);
  }

  const BASIS = { heuristic: "from the prompt", preview: "corrected by the preview", first_chunk: "from the first rows" };

  function dollars(value) {
    return value == null ? "–" : `$${Number(value).toFixed(Number(value) < 1 ? 4 : 2)}`;
  }

  // The job's cost so far beside what it was expected to cost (text only, never HTML).
  function renderCost(job) {
    setText(el["job-cost"], dollars(job.cost_usd) + (job.cached_tokens ? ` (${formatNumber(job.cached_tokens)} cached tokens)` : ""));
    const estimate = job.estimate;
    if (!estimate || estimate.cost_usd == null) {
      setText(el["job-estimate"], "–");
      return;
    }
    let text = `${dollars(estimate.cost_usd)} (${BASIS[estimate.basis] || estimate.basis})`;
    const start = estimate.at_start;
    if (start && start.cost_usd != null && estimate.basis === "first_chunk") text += `; ${dollars(start.cost_usd)} at the start`;
    if (estimate.reused_rows) text += `; ${formatNumber(estimate.reused_rows)} rows reused`;
    setText(el["job-estimate"], text);
  }

  function renderJob(job) {
    state.job = job;
    const total = job.total_rows || 0;
    const done = (job.processed_rows || 0) + (job.failed_rows || 0);
    const remaining = Math.max(0, total - done);
    setText(el["job-file"], job.file_name || job.id);
    setText(el["job-status"], job.status === "ingesting"
      ? `reading file… ${formatNumber(job.ingested_rows || 0)} rows` : job.status);
    el["job-status"].dataset.status = job.status;
    el["job-progress"].max = 100;
    el["job-progress"].value = job.progress || 0;
    setText(el["job-percent"], `${job.progress || 0} % — ${formatNumber(done)} of ${formatNumber(total)} URLs done`);
    setText(el["job-processed"], formatNumber(job.processed_rows));
    setText(el["job-failed"], formatNumber(job.failed_rows));
    setText(el["job-remaining"], formatNumber(remaining));
    setText(el["job-eta"], eta(job));
    // provider calls admitted for the job in the last minute (GET /api/jobs/{id}); only while processing
    setText(el["job-calls"], job.status === "processing" && typeof job.calls_per_minute === "number"
      ? formatNumber(job.calls_per_minute) : "–");
    renderCost(job);
    setText(el["job-error"], job.error || "");
    show(el["job-error"], Boolean(job.error));
    renderQuality(job.quality);
    el["cancel-button"].disabled = !(job.status === "pending" || ACTIVE.has(job.status));
    el["retry-button"].disabled = !((job.status === "completed" && job.failed_rows > 0)
      || job.status === "canceled" || (job.status === "failed" && job.total_rows > 0));
    el["download-button"].disabled = job.status === "pending";
    el["download-approved-button"].disabled = job.status === "pending";
  }

  el["cancel-button"].addEventListener("click", async () => {
    if (!state.job) return;
    showError("");
    el["cancel-button"].disabled = true;
    try {
      const answer = await call("POST", `api/upload/${encodeURIComponent(state.job.id)}/cancel`);
      stopPolling();
      renderJob(answer.job);
      notify("Job canceled. Openers already written are kept; Retry carries on with the rest.");
      loadResults();
      loadJobs(true);
    } catch (err) {
      handleError(err);
      if (state.job) renderJob(state.job);
    }
  });

  el["retry-button"].addEventListener("click", async () => {
    if (!state.job) return;
    showError("");
    el["retry-button"].disabled = true;
    try {
      const answer = await call("POST", `api/jobs/${encodeURIComponent(state.job.id)}/retry`);
      notify(`Retrying ${formatNumber(answer.retried)} URL(s).`);
      state.samples = [];
      renderJob(answer.job);
      loadResults();
      loadJobs(true);
      schedulePoll();
    } catch (err) {
      handleError(err);
      if (state.job) renderJob(state.job);
    }
  });

  el["new-button"].addEventListener("click", () => {
    stopPolling();
    state.job = null;
    state.upload = null;
    state.file = null;
    show(el["job-section"], false);
    show(el["summary-section"], false);
    show(el["upload-progress-box"], false);
    el.instructions.value = "";
    resetQualityOptions();
    notify("");
    showError("");
    el["file-input"].focus();
  });

  // ------------------------------------------------------------------ download

  function downloadName(response, job) {
    const header = response.headers.get("Content-Disposition") || "";
    const star = /filename\*=UTF-8''([^;]+)/i.exec(header);
    if (star) {
      try { return decodeURIComponent(star[1]); } catch (_) { /* fall through */ }
    }
    const plain = /filename="([^"]+)"/i.exec(header);
    if (plain) return plain[1];
    const stem = String(job.file_name || "results").replace(/\.[^.]*$/, "");
    return `${stem}-openers.csv`;
  }

  /** The results CSV (`query` {review: "approved"}: the approved rows only), saved by the browser. */
  async function downloadFile(button, query) {
    if (!state.job) return;
    const job = state.job;
    showError("");
    button.disabled = true;
    notify("Preparing the download…");
    try {
      // A 200 is the CSV itself; a 302 points at a presigned S3 copy, which fetch follows (the
      // browser drops the Authorization header on the way to the other origin); a 202 says a big
      // CSV is being built on the server: asked again after its Retry-After, for up to 20 minutes.
      const url = new URL(apiUrl(`api/upload/${encodeURIComponent(job.id)}/download`));
      Object.entries(query || {}).forEach(([k, v]) => url.searchParams.set(k, v));
      let response;
      for (let waited = 0; ; ) {
        try {
          response = await fetch(url.href, { headers: authHeaders(), cache: "no-store" });
        } catch (_) {
          throw new ApiError(0, "network", "The download could not be fetched: the API or the storage it points to "
            + "did not answer, or refused this page (the bucket needs a CORS rule for this page).");
        }
        if (response.status !== 202) break;
        const building = await response.json().catch(() => ({}));
        const pause = Math.min(60, Math.max(1, Number(response.headers.get("Retry-After"))
          || Number(building.retry_after) || 5));
        if (waited + pause > 1200) {
          throw new ApiError(202, "export_not_ready", "The server is still building the CSV; try the download again later.");
        }
        notify(`The server is building the CSV${waited ? ` (waited ${Math.round(waited)} s)` : ""}…`);
        await sleep(pause * 1000);
        waited += pause;
      }
      if (!response.ok) {
        const text = await response.text();
        if (response.url.startsWith(BASE.origin)) throw errorFromBody(response.status, text);
        throw new ApiError(response.status, "storage_error", `Storage refused the download (HTTP ${response.status}); try again.`);
      }
      const blob = await response.blob();
      const link = document.createElement("a");
      link.href = URL.createObjectURL(blob);
      link.download = downloadName(response, job);
      // the approved rows only: a name of their own, beside the whole file's
      if (query && query.review) link.download = link.download.replace(/(\.csv)?$/i, `-${query.review}.csv`);
      document.body.append(link);
      link.click();
      link.remove();
      window.setTimeout(() => URL.revokeObjectURL(link.href), 60000);
      notify(`Downloaded ${link.download} (${formatBytes(blob.size)}).`);
    } catch (err) {
      notify("");
      handleError(err);
    } finally {
      button.disabled = state.job ? state.job.status === "pending" : true;
    }
  }

  el["download-button"].addEventListener("click", () => downloadFile(el["download-button"], null));
  el["download-approved-button"].addEventListener("click",
    () => downloadFile(el["download-approved-button"], { review: "approved" }));

  // ------------------------------------------------------------------ results

  // The results table is the review queue (review.js): edit in place, approve, reject, select and
  // regenerate with feedback. A regeneration puts the job back to processing: polled like any job.
  const review = window.CsvOpenerReview.create({
    call, handleError, formatNumber, flagList,
    currentJob: () => state.job,
    jobChanged: (job) => {
      state.samples = [];
      renderJob(job);
      loadJobs(true);
      if (ACTIVE.has(job.status)) schedulePoll();
    },
  });

  function loadResults() { return review.load(); }

  // ------------------------------------------------------------------ jobs

  async function loadJobs(fromStart) {
    if (fromStart) state.jobsCursor = null;
    try {
      const answer = await call("GET", "api/jobs", { query: { limit: JOBS_PAGE, cursor: state.jobsCursor } });
      const rows = (answer.jobs || []).map((job) => {
        const open = document.createElement("button");
        open.type = "button";
        open.textContent = "Open";
        open.setAttribute("aria-label", `Open ${job.file_name || job.id}`);
        open.addEventListener("click", () => {
          showError("");
          if (job.status === "pending") {
            state.file = null;
            state.presigned = job.source === "presigned";
            showSummary({ job, url_column: job.url_column, total_rows: job.total_rows,
              invalid_rows: job.invalid_rows, errors: [] }, []);
            show(el["job-section"], false);
            stopPolling();
            state.job = null;
          } else {
            openJob(job);
          }
        });
        const status = document.createElement("span");
        status.className = "status";
        status.dataset.status = job.status;
        status.textContent = job.status;
        return [job.file_name, status, `${job.progress || 0} %`, formatDate(job.created_at), open];
      });
      const tbody = el["jobs-table"].tBodies[0];
      if (fromStart) tbody.replaceChildren();
      tbody.append(...tableRows(rows));
      state.jobsCursor = answer.next_cursor || null;
      show(el["jobs-more"], Boolean(state.jobsCursor));
      show(el["jobs-empty"], tbody.children.length === 0);
    } catch (err) {
      handleError(err);
    }
  }

  el["jobs-refresh"].addEventListener("click", () => loadJobs(true));
  el["jobs-more"].addEventListener("click", () => loadJobs(false));

  // ------------------------------------------------------------------ start-up

  setText(el["direct-limit"], formatBytes(MAX_DIRECT));
  detectPreview();
  if (key()) {
    useKey(key()).catch(keyFailed);
  } else {
    askForKey("");
  }
})();
