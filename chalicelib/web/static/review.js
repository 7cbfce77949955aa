// CSV Opener's review queue: the results table of the page, edited in place with the keyboard.
//
// Loaded before app.js, which creates it with the helpers it shares (API calls, errors, the job in
// view) and hands it the results section. Keys on a row of the table: j/k (or the arrows) move,
// e edits the opener (Enter saves, Esc cancels), a approves, r rejects, u clears the review, x or
// space selects, g goes to the feedback box to regenerate the selected rows, h shows the row's
// earlier openers, 1/2/3 pick that variant of a row with several (v: the next one). Every value
// from the API is put on the page with textContent, never as HTML.
"use strict";

window.CsvOpenerReview = (() => {
  const PAGE_SIZE = 20;
  const OPENER_MAX = 600;
  const REVIEW_WORDS = { approved: "approved", rejected: "rejected" };

  function create(ctx) {
    const $ = (id) => {
      const node = document.getElementById(id);
      if (!node) throw new Error(`The page has no element #${id}`);
      return node;
    };
    const el = {};
    [
      "results-filter", "quality-filter", "review-filter", "results-refresh", "results-table", "results-empty",
      "results-prev", "results-page", "results-next", "review-message", "review-selected", "review-approve-selected",
      "review-reject-selected", "review-clear-selection", "regenerate-form", "regenerate-feedback",
      "regenerate-button", "review-history", "review-history-title", "review-history-list", "bulk-review",
      "bulk-review-button",
    ].forEach((id) => { el[id] = $(id); });
    const tbody = el["results-table"].tBodies[0];

    const view = {
      rows: [],            // the rows shown, as the API answered them
      current: 0,          // index of the row the keys act on
      cursors: [null],     // the cursor of each page seen so far
      index: 0,            // the page shown
      next: null,
      selected: new Set(), // result ids, kept across pages and reloads
      editing: null,       // {id, version, box} while an opener is being edited
      saving: false,
      reloadWanted: false, // a reload asked for while editing: done when the editor closes
      focusAfterLoad: null, // "first" | "last" after a page change by keyboard
      loads: 0,            // the latest load's number: an older answer is dropped
      regenerating: 0,     // rows sent to regeneration from this page and not yet seen done
      queue: Promise.resolve(), // the row changes being sent, in order
    };

    const jobId = () => {
      const job = ctx.currentJob();
      return job ? job.id : null;
    };
    const resultPath = (id, resultId) => `api/jobs/${encodeURIComponent(id)}/results/${encodeURIComponent(resultId)}`;

    /** A message beside the table: what happened, or (problem) why something was refused. */
    function say(message, problem) {
      el["review-message"].textContent = message || "";
      el["review-message"].classList.toggle("error", Boolean(problem));
    }

    function showSelection() {
      const n = view.selected.size;
      el["review-selected"].textContent = n ? `${ctx.formatNumber(n)} row(s) selected` : "No rows selected";
      el["review-approve-selected"].disabled = n === 0;
      el["review-reject-selected"].disabled = n === 0;
      el["review-clear-selection"].disabled = n === 0;
    }

    // ---------------------------------------------------------------- rendering

    function cell(content) {
      const td = document.createElement("td");
      if (content instanceof Node) td.append(content); else td.textContent = content == null ? "" : String(content);
      return td;
    }

    function openerContent(row) {
      const box = document.createElement("div");
      const text = document.createElement("span");
      text.className = "opener-text";
      text.textContent = row.status === "failed" ? (row.error || "") : (row.opener || "");
      box.append(text);
      const variants = Array.isArray(row.variants) ? row.variants : [];
      if (variants.length > 1) {
        const list = document.createElement("ol");
        list.className = "variants";
        list.setAttribute("aria-label", `Variants of row ${row.row}`);
        variants.forEach((variant, i) => {
          const item = document.createElement("li");
          const picked = Number(row.variant || 1) === i + 1;
          item.classList.toggle("picked", picked);
          if (picked) item.setAttribute("aria-current", "true");
          item.textContent = variant && variant.opener ? String(variant.opener) : "";
          list.append(item);
        });
        box.append(list);
      }
      if (row.feedback && (row.status === "pending" || row.status === "processing")) {
        const note = document.createElement("p");
        note.className = "hint";
        note.textContent = `Regenerating with your feedback: ${row.feedback}`;
        box.append(note);
      }
      return box;
    }

    function rowNode(row) {
      const tr = document.createElement("tr");
      tr.dataset.id = String(row.id);
      tr.tabIndex = -1;
      const status = document.createElement("span");
      status.className = "status";
      status.dataset.status = row.status;
      status.textContent = row.status;
      const review = document.createElement("span");
      review.className = "review";
      review.dataset.review = row.review || "none";
      review.textContent = REVIEW_WORDS[row.review] || "";
      const pick = document.createElement("input");
      pick.type = "checkbox";
      pick.tabIndex = -1; // the row takes the keys (x, space); the box is for the mouse
      pick.checked = view.selected.has(String(row.id));
      pick.setAttribute("aria-label", `Select row ${row.row}`);
      pick.addEventListener("change", () => toggleSelected(row, pick.checked));
      tr.append(cell(row.row), cell(row.url), cell(status), cell(openerContent(row)), cell(ctx.flagList(row.quality)),
        cell(row.evidence || ""), cell(review), cell(pick));
      tr.classList.toggle("selected", pick.checked);
      tr.addEventListener("focus", () => markCurrent(view.rows.findIndex((r) => String(r.id) === String(row.id))));
      tr.addEventListener("click", (event) => {
        if (event.target !== pick && !view.editing) tr.focus();
      });
      return tr;
    }

    function markCurrent(index) {
      if (index < 0 || index >= view.rows.length) return;
      view.current = index;
      Array.from(tbody.rows).forEach((tr, i) => {
        tr.tabIndex = i === index ? 0 : -1;
        if (i === index) tr.setAttribute("aria-current", "true"); else tr.removeAttribute("aria-current");
      });
    }

    function focusRow(index) {
      if (!view.rows.length) return;
      const i = Math.max(0, Math.min(view.rows.length - 1, index));
      markCurrent(i);
      tbody.rows[i].focus();
    }

    function render(rows) {
      const hadFocus = tbody.contains(document.activeElement);
      const before = view.rows[view.current];
      view.rows = rows;
      tbody.replaceChildren(...rows.map(rowNode));
      let index = before ? rows.findIndex((r) => String(r.id) === String(before.id)) : -1;
      if (index < 0) index = Math.min(view.current, rows.length - 1);
      if (view.focusAfterLoad === "first") index = 0;
      if (view.focusAfterLoad === "last") index = rows.length - 1;
      const focus = hadFocus || view.focusAfterLoad;
      view.focusAfterLoad = null;
      if (rows.length) {
        if (focus) focusRow(index); else markCurrent(Math.max(0, index));
      } else {
        view.current = 0;
      }
    }

    /** One row changed (an edit, a review, a reload): put it in place of its old self. The keys'
     * row stays where it is (the answer may come after the person has moved on). */
    function replaceRow(row) {
      const index = view.rows.findIndex((r) => String(r.id) === String(row.id));
      if (index < 0) return;
      const hadFocus = tbody.contains(document.activeElement);
      view.rows[index] = row;
      if (view.editing && view.editing.id === String(row.id)) { // our own change sent before the edit began
        view.editing.version = row.version; // the editor stays; closing it draws the row
        return;
      }
      tbody.rows[index].replaceWith(rowNode(row));
      if (hadFocus && !view.editing) focusRow(view.current); else markCurrent(view.current);
    }

    /** Changes of rows are sent one after the other, each with the version the last answer gave
     * (a and then u pressed quickly on one row are two changes, not a stale one). */
    function queued(change) {
      view.queue = view.queue.then(change, change);
      return view.queue;
    }

    // ---------------------------------------------------------------- loading

    async function load() {
      const id = jobId();
      if (!id) return;
      if (view.editing) {
        view.reloadWanted = true;
        return;
      }
      const number = ++view.loads;
      try {
        const answer = await ctx.call("GET", `api/jobs/${encodeURIComponent(id)}/results`, {
          query: {
            limit: PAGE_SIZE, status: el["results-filter"].value, quality: el["quality-filter"].value,
            review: el["review-filter"].value, cursor: view.cursors[view.index],
          },
        });
        if (number !== view.loads || jobId() !== id) return;
        if (view.editing) {
          view.reloadWanted = true;
          return;
        }
        view.next = answer.next_cursor || null;
        render(answer.results || []);
        el["results-empty"].hidden = view.rows.length !== 0;
        el["results-page"].textContent = `Page ${view.index + 1}`;
        el["results-prev"].disabled = view.index === 0;
        el["results-next"].disabled = !view.next;
        const job = ctx.currentJob();
        if (view.regenerating && job && job.status !== "processing" && job.status !== "pending") {
          say(job.status === "completed"
            ? `Regeneration done: ${ctx.formatNumber(view.regenerating)} row(s) written again.`
            : `The job is ${job.status}; rows not regenerated yet can be retried.`, job.status !== "completed");
          view.regenerating = 0;
        }
      } catch (err) {
        ctx.handleError(err);
      }
    }

    async function reloadRow(resultId) {
      const id = jobId();
      if (!id) return null;
      const answer = await ctx.call("GET", resultPath(id, resultId));
      if (jobId() !== id || !answer.result) return null;
      replaceRow(answer.result);
      return answer.result;
    }

    function reset() {
      closeEditor();
      view.rows = [];
      view.current = 0;
      view.cursors = [null];
      view.index = 0;
      view.next = null;
      view.selected.clear();
      view.regenerating = 0;
      view.reloadWanted = false;
      el["results-filter"].value = "";
      el["quality-filter"].value = "";
      el["review-filter"].value = "";
      el["regenerate-feedback"].value = "";
      el["bulk-review"].value = "approved";
      el["review-history"].hidden = true;
      tbody.replaceChildren();
      say("");
      showSelection();
    }

    function goToPage(index, focus) {
      if (index < 0 || (index > view.index && !view.next)) return false;
      if (index > view.index) view.cursors = view.cursors.slice(0, view.index + 1).concat([view.next]);
      view.index = index;
      view.focusAfterLoad = focus || null;
      load();
      return true;
    }

    function filtersChanged() {
      view.cursors = [null];
      view.index = 0;
      view.next = null;
      view.current = 0;
      load();
    }

    // ---------------------------------------------------------------- editing

    function problemOf(err, row) {
      if (err && err.status === 409 && err.code === "stale_version") {
        return `Row ${row.row} was changed elsewhere after you opened it, so this change was not saved. `
          + "It now shows its latest version: check it and try again.";
      }
      return err && err.message ? err.message : String(err);
    }

    function startEdit() {
      const row = view.rows[view.current];
      if (!row || view.editing) return;
      if (row.status !== "completed") {
        say(`Row ${row.row} has no opener to edit (it is ${row.status}).`, true);
        return;
      }
      const tr = tbody.rows[view.current];
      const box = document.createElement("textarea");
      box.className = "editor";
      box.rows = 3;
      box.maxLength = OPENER_MAX;
      box.value = row.opener || "";
      box.setAttribute("aria-label", `Opener for row ${row.row}`);
      const hint = document.createElement("p");
      hint.className = "hint";
      hint.textContent = "Enter saves, Esc cancels.";
      tr.cells[3].replaceChildren(box, hint);
      view.editing = { id: String(row.id), version: row.version, box, row: row.row };
      box.addEventListener("keydown", (event) => {
        event.stopPropagation(); // the row's keys (j, k, a, ...) are letters here
        if (event.key === "Enter" && !event.shiftKey && !event.isComposing) {
          event.preventDefault();
          save();
        } else if (event.key === "Escape") {
          event.preventDefault();
          closeEditor();
          say(`Row ${row.row}: edit canceled.`);
          focusRow(view.current);
        }
      });
      box.focus();
      box.setSelectionRange(box.value.length, box.value.length);
      say(`Editing row ${row.row}.`);
    }

    /** The editor closed: the row as it was (or as saved), and any reload put off meanwhile. */
    function closeEditor() {
      const editing = view.editing;
      view.editing = null;
      view.saving = false;
      if (!editing) return;
      const index = view.rows.findIndex((r) => String(r.id) === editing.id);
      if (index >= 0) {
        tbody.rows[index].replaceWith(rowNode(view.rows[index]));
        markCurrent(view.current);
      }
      if (view.reloadWanted) {
        view.reloadWanted = false;
        load();
      }
    }

    async function save() {
      const editing = view.editing;
      if (!editing || view.saving) return;
      const row = view.rows.find((r) => String(r.id) === editing.id);
      const text = editing.box.value.trim();
      if (!text) {
        say("An opener cannot be empty: write one, or press Esc to keep the one there.", true);
        return;
      }
      if (text === row.opener) {
        closeEditor();
        say(`Row ${row.row}: nothing changed.`);
        focusRow(view.current);
        return;
      }
      view.saving = true;
      editing.box.readOnly = true;
      say(`Saving row ${row.row}…`);
      const id = jobId();
      try {
        const answer = await queued(() => ctx.call("PATCH", resultPath(id, editing.id),
          { json: { opener: text, version: editing.version } }));
        closeEditor();
        replaceRow(answer.result);
        say(`Row ${row.row} saved.`);
        focusRow(view.current);
      } catch (err) {
        if (err && err.status === 400) { // the text itself: say why and keep it for fixing
          view.saving = false;
          editing.box.readOnly = false;
          say(problemOf(err, row), true);
          editing.box.focus();
          return;
        }
        closeEditor();
        if (err && err.status === 401) {
          ctx.handleError(err);
          return;
        }
        focusRow(view.current);
        if (err && err.status === 409) { // changed elsewhere, or being regenerated: show it as it is now
          try {
            await reloadRow(editing.id);
          } catch (again) {
            ctx.handleError(again);
          }
        }
        say(err && err.code === "stale_version" ? `${problemOf(err, row)} Your text was: “${text}”`
          : problemOf(err, row), true);
      }
    }

    function setReview(value) {
      const shown = view.rows[view.current];
      if (shown) queued(() => sendReview(String(shown.id), value));
    }

    async function sendReview(resultId, value) {
      const row = view.rows.find((r) => String(r.id) === resultId);
      if (!row) return;
      if ((row.review || null) === value) {
        say(`Row ${row.row} is ${value || "not reviewed"} already.`);
        return;
      }
      await patchRow(row, { review: value },
        value ? `Row ${row.row} ${value}.` : `Row ${row.row}: review cleared.`);
    }

    /** PATCH the row with `change` at the version shown; on success show it and say `done`; on a
     * 409 (changed elsewhere, or being regenerated) show the row as it is now, and say why. */
    async function patchRow(row, change, done) {
      try {
        const answer = await ctx.call("PATCH", resultPath(jobId(), row.id),
          { json: { ...change, version: row.version } });
        replaceRow(answer.result);
        say(done);
      } catch (err) {
        if (err && err.status === 401) {
          ctx.handleError(err);
          return;
        }
        if (err && err.status === 409) {
          try { await reloadRow(row.id); } catch (again) { ctx.handleError(again); }
        }
        say(problemOf(err, row), true);
      }
    }

    /** Pick variant `number` of the keys' row (or, with "next", the one after the picked one). */
    function pickVariant(number) {
      const shown = view.rows[view.current];
      if (!shown) return;
      const count = Array.isArray(shown.variants) ? shown.variants.length : 0;
      if (count < 2) {
        say(`Row ${shown.row} has no variants to pick from.`, true);
        return;
      }
      const wanted = number === "next" ? (Number(shown.variant || 1) % count) + 1 : number;
      if (wanted > count) {
        say(`Row ${shown.row} has ${count} variants.`, true);
        return;
      }
      queued(() => sendPick(String(shown.id), wanted));
    }

    async function sendPick(resultId, number) {
      const row = view.rows.find((r) => String(r.id) === resultId);
      if (!row) return;
      if (Number(row.variant || 1) === number) {
        say(`Row ${row.row}: variant ${number} is the one picked already.`);
        return;
      }
      await patchRow(row, { variant: number }, `Row ${row.row}: variant ${number} picked.`);
    }

    async function showHistory() {
      const row = view.rows[view.current];
      if (!row) return;
      try {
        const result = await reloadRow(row.id);
        if (!result) return;
        el["review-history-title"].textContent = `Earlier openers of row ${result.row}`;
        const items = (Array.isArray(result.history) ? result.history : []).map((entry) => {
          const li = document.createElement("li");
          const when = document.createElement("span");
          when.className = "hint";
          const at = entry.at ? new Date(entry.at) : null;
          const by = entry.source === "person" ? "a person" : "the model";
          when.textContent = `${by}, ${at && !Number.isNaN(at.getTime()) ? at.toLocaleString() : ""}: `;
          li.append(when, document.createTextNode(entry.opener || ""));
          return li;
        });
        el["review-history-list"].replaceChildren(...items);
        el["review-history"].hidden = false;
        say(items.length ? "" : `Row ${result.row} has no earlier openers.`);
        focusRow(view.current);
      } catch (err) {
        ctx.handleError(err);
      }
    }

    // ---------------------------------------------------------------- selection, bulk, regenerate

    function toggleSelected(row, on) {
      const id = String(row.id);
      const select = on === undefined ? !view.selected.has(id) : on;
      if (select) view.selected.add(id); else view.selected.delete(id);
      const index = view.rows.findIndex((r) => String(r.id) === id);
      if (index >= 0) {
        const tr = tbody.rows[index];
        tr.classList.toggle("selected", select);
        tr.cells[7].firstChild.checked = select;
      }
      showSelection();
    }

    async function reviewSelected(value) {
      const id = jobId();
      if (!id || !view.selected.size) return;
      try {
        const answer = await ctx.call("POST", `api/jobs/${encodeURIComponent(id)}/review`,
          { json: { result_ids: [...view.selected], review: value } });
        say(`${ctx.formatNumber(answer.reviewed)} row(s) ${value}.`);
        load();
      } catch (err) {
        if (err && err.status === 401) ctx.handleError(err); else say(problemOf(err, {}), true);
      }
    }

    /** Every row matching the filters (all pages; the API marks completed rows only). */
    async function reviewMatching() {
      const id = jobId();
      if (!id) return;
      const value = el["bulk-review"].value || null;
      const filter = {};
      [["status", "results-filter"], ["quality", "quality-filter"], ["review", "review-filter"]].forEach(([name, sel]) => {
        if (el[sel].value) filter[name] = el[sel].value;
      });
      el["bulk-review-button"].disabled = true;
      try {
        const answer = await ctx.call("POST", `api/jobs/${encodeURIComponent(id)}/review`,
          { json: { filter, review: value } });
        say(`${ctx.formatNumber(answer.reviewed)} row(s) marked ${value || "not reviewed"}.`);
        load();
      } catch (err) {
        if (err && err.status === 401) ctx.handleError(err); else say(problemOf(err, {}), true);
      } finally {
        el["bulk-review-button"].disabled = false;
      }
    }

    async function regenerate(event) {
      event.preventDefault();
      const id = jobId();
      if (!id) return;
      if (!view.selected.size) {
        say("Select the rows to regenerate first: x or space on a row.", true);
        return;
      }
      const body = { result_ids: [...view.selected] };
      const feedback = el["regenerate-feedback"].value.trim();
      if (feedback) body.feedback = feedback;
      el["regenerate-button"].disabled = true;
      try {
        const answer = await ctx.call("POST", `api/jobs/${encodeURIComponent(id)}/regenerate`, { json: body });
        view.selected.clear();
        showSelection();
        el["regenerate-feedback"].value = "";
        view.regenerating = Number(answer.regenerating) || 0;
        say(`Regenerating ${ctx.formatNumber(view.regenerating)} row(s)${feedback ? " with your feedback" : ""}…`);
        view.focusAfterLoad = "keep";
        ctx.jobChanged(answer.job);
        load();
      } catch (err) {
        if (err && err.status === 401) ctx.handleError(err); else say(problemOf(err, {}), true);
      } finally {
        el["regenerate-button"].disabled = false;
      }
    }

    // ---------------------------------------------------------------- keys and controls

    tbody.addEventListener("keydown", (event) => {
      if (view.editing || event.ctrlKey || event.metaKey || event.altKey) return;
      const tr = event.target.closest ? event.target.closest("tr") : null;
      if (!tr || tr.parentNode !== tbody) return;
      const row = view.rows[view.current];
      let handled = true;
      switch (event.key) {
        case "j": case "ArrowDown":
          if (view.current < view.rows.length - 1) focusRow(view.current + 1);
          else if (!goToPage(view.index + 1, "first")) handled = event.key === "j";
          break;
        case "k": case "ArrowUp":
          if (view.current > 0) focusRow(view.current - 1);
          else if (!goToPage(view.index - 1, "last")) handled = event.key === "k";
          break;
        case "e": case "F2": startEdit(); break;
        case "a": setReview("approved"); break;
        case "r": setReview("rejected"); break;
        case "u": setReview(null); break;
        case "x": case " ": if (row) toggleSelected(row); break;
        case "h": showHistory(); break;
        case "1": case "2": case "3": pickVariant(Number(event.key)); break;
        case "v": pickVariant("next"); break;
        case "g":
          if (view.selected.size) el["regenerate-feedback"].focus();
          else say("Select the rows to regenerate first: x or space on a row.", true);
          break;
        default: handled = false;
      }
      if (handled) event.preventDefault();
    });

    el["regenerate-feedback"].addEventListener("keydown", (event) => {
      if (event.key === "Escape") {
        event.preventDefault();
        focusRow(view.current);
      }
    });
    el["regenerate-form"].addEventListener("submit", regenerate);
    el["review-approve-selected"].addEventListener("click", () => reviewSelected("approved"));
    el["bulk-review-button"].addEventListener("click", reviewMatching);
    el["review-reject-selected"].addEventListener("click", () => reviewSelected("rejected"));
    el["review-clear-selection"].addEventListener("click", () => {
      view.selected.clear();
      Array.from(tbody.rows).forEach((tr) => {
        tr.classList.remove("selected");
        tr.cells[7].firstChild.checked = false;
      });
      showSelection();
    });
    ["results-filter", "quality-filter", "review-filter"].forEach((id) => el[id].addEventListener("change", filtersChanged));
    el["results-refresh"].addEventListener("click", () => load());
    el["results-next"].addEventListener("click", () => goToPage(view.index + 1));
    el["results-prev"].addEventListener("click", () => goToPage(view.index - 1));
    showSelection();

    return { load, reset };
  }

  return { create };
})();
