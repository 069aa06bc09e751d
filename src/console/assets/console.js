// The console's one script. The pages work by links and forms; this adds what a page cannot do
// alone: the New Import form's check and streamed upload with its progress bar, and an import's
// counters moving live. It is attached to the pages' data- attributes: the Content-Security-Policy
// allows no inline script.
"use strict";

(function () {
  const form = document.getElementById("new-import");
  if (form) {
    upload(form);
  }
  const live = document.querySelector("[data-events]");
  if (live) {
    follow(live);
  }

  // The form's fields as the upload's query: the server parses them as gRPC parses
  // ImportMetadata.
  function query(form, file, importId) {
    const p = new URLSearchParams();
    p.set("filename", file.name);
    p.set("size", String(file.size));
    if (importId) {
      p.set("import_id", importId);
    }
    if (form.elements.validate_only.checked) {
      p.set("validate_only", "1");
    }
    p.set("on_conflict", form.elements.on_conflict.value);
    p.set("invitations", form.elements.invitations.value);
    if (form.elements.retry_of) {
      p.set("retry_of", form.elements.retry_of.value);
    }
    return p.toString();
  }

  // The server's answer as JSON; a page that is not (a proxy's error page) becomes a message.
  async function answer(response) {
    const type = response.headers.get("content-type") || "";
    if (type.startsWith("application/json")) {
      return response.json();
    }
    return { error: "The server answered " + response.status + " " + response.statusText + "; reload the page and try again." };
  }

  function mib(bytes) {
    return (bytes / 1048576).toFixed(1);
  }

  // Save: first the check (the file's name, size and first bytes), whose refusal shows at once;
  // then the file itself, streamed from the disk by the browser, with a progress bar; then the
  // import's page.
  function upload(form) {
    const error = document.getElementById("form-error");
    const save = document.getElementById("save");
    const box = document.getElementById("upload-progress");
    const bar = document.getElementById("progress");
    const text = document.getElementById("progress-text");
    const csrf = form.dataset.csrf;

    function fail(message) {
      error.textContent = message;
      error.hidden = false;
      box.hidden = true;
      save.disabled = false;
    }

    form.addEventListener("submit", async function (event) {
      event.preventDefault();
      error.hidden = true;
      const file = form.elements.file.files[0];
      if (!file) {
        fail("Choose a CSV file to import.");
        return;
      }
      save.disabled = true;
      let checked;
      try {
        const head = await file.slice(0, 8192).arrayBuffer();
        const response = await fetch(form.dataset.check + "?" + query(form, file), {
          method: "POST",
          headers: { "x-csrf-token": csrf, "content-type": "application/octet-stream" },
          body: head,
          credentials: "same-origin",
        });
        checked = await answer(response);
        if (!response.ok) {
          fail(checked.error);
          return;
        }
      } catch (e) {
        fail("The server could not be reached (" + e.message + "); try again.");
        return;
      }
      box.hidden = false;
      bar.value = 0;
      text.textContent = "Starting…";
      const xhr = new XMLHttpRequest();
      xhr.open("POST", form.dataset.upload + "?" + query(form, file, checked.import_id));
      xhr.setRequestHeader("x-csrf-token", csrf);
      xhr.setRequestHeader("content-type", "text/csv");
      xhr.upload.addEventListener("progress", function (e) {
        if (e.lengthComputable && e.total > 0) {
          const percent = Math.floor((e.loaded * 100) / e.total);
          bar.value = percent;
          text.textContent = "Sent " + percent + "% (" + mib(e.loaded) + " of " + mib(e.total) + " MiB)";
        }
      });
      xhr.upload.addEventListener("load", function () {
        bar.value = 100;
        text.textContent = "Sent; the server is finishing the import…";
      });
      xhr.addEventListener("load", function () {
        let answer;
        try {
          answer = JSON.parse(xhr.responseText);
        } catch (e) {
          answer = { error: "The server answered " + xhr.status + "; try again." };
        }
        if (xhr.status >= 200 && xhr.status < 300) {
          window.location.assign(answer.url);
        } else {
          fail(answer.error);
        }
      });
      xhr.addEventListener("error", function () {
        fail("The upload broke off: the connection was lost, and nothing was imported. Try again.");
      });
      xhr.send(file);
    });
  }

  // An import that runs: its counters and status follow the server's events in place; once it
  // ended, the page is loaded again to show its errors and actions.
  function follow(section) {
    const source = new EventSource(section.dataset.events);
    source.addEventListener("import", function (e) {
      const data = JSON.parse(e.data);
      section.querySelectorAll("[data-counter]").forEach(function (cell) {
        const value = data[cell.dataset.counter];
        if (value !== undefined) {
          cell.textContent = String(value);
        }
      });
      const status = section.querySelector("[data-status]");
      if (status) {
        status.textContent = data.status;
      }
      const explanation = section.querySelector("[data-explanation]");
      if (explanation) {
        explanation.textContent = data.explanation;
      }
      if (data.terminal) {
        source.close();
        window.location.reload();
      }
    });
    // The live view stopped (the server refused or lost the watch): the page says so, and a
    // reload shows the import as it stands.
    function stopped(message) {
      source.close();
      const note = section.querySelector("[data-live-note]");
      if (note) {
        note.textContent = message + " Reload the page to see the import as it stands now.";
        note.hidden = false;
      }
    }
    source.addEventListener("failed", function (e) {
      stopped("The live counters stopped: " + e.data + ".");
    });
    source.addEventListener("error", function () {
      if (source.readyState === EventSource.CLOSED) {
        stopped("The live counters stopped.");
      }
    });
  }
})();
