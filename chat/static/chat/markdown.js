/* Markdown for assistant replies: marked (parse) + DOMPurify (sanitize), both vendored.

   Safety, in two layers:
   1. Raw HTML in the reply is never passed through: marked's `html` tokens (block and
      inline) are rendered as escaped text, so `<img onerror=...>` or `<script>` shows up
      as the characters the model wrote.
   2. The HTML marked produces is sanitized by DOMPurify anyway (no scripts, handlers,
      styles, forms, embeds; only safe link schemes), in case a parser bug lets markup by.
   Images are shown as links (an image from a reply could track the reader or leak data
   through its URL). Links open in a new tab without a referrer. */
"use strict";

(function () {
  const ESC = { "&": "&amp;", "<": "&lt;", ">": "&gt;", '"': "&quot;", "'": "&#39;" };
  const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ESC[c]);

  const available = typeof window.marked === "object" && typeof window.DOMPurify === "function";
  let parser = null;
  if (available) {
    parser = new window.marked.Marked({ gfm: true, breaks: true });
    parser.use({
      renderer: {
        html(token) {
          const text = escapeHtml(token.text || token.raw || "");
          return token.block ? `<p>${text.replace(/\n/g, "<br>")}</p>` : text;
        },
        image(token) {
          const label = escapeHtml(token.text || token.href || "image");
          return `<a href="${escapeHtml(token.href || "")}" class="image-link">🖼 ${label}</a>`;
        },
      },
    });
    window.DOMPurify.addHook("afterSanitizeAttributes", (node) => {
      if (node.tagName === "A") {
        node.setAttribute("target", "_blank");
        node.setAttribute("rel", "noopener noreferrer nofollow");
      }
    });
  }

  const PURIFY = {
    FORBID_TAGS: ["style", "form", "input", "button", "textarea", "select", "img", "svg",
      "math", "iframe", "object", "embed", "video", "audio", "picture", "source", "link",
      "meta", "base"],
    FORBID_ATTR: ["style", "id", "name"],
    ALLOW_DATA_ATTR: false,
    RETURN_DOM_FRAGMENT: true,
  };

  // Add a header with the language and a copy button to each code block. The copy
  // buttons are handled by one delegated listener in render.js (no inline handlers: CSP).
  function decorateCodeBlocks(fragment) {
    for (const pre of fragment.querySelectorAll("pre")) {
      const code = pre.querySelector("code");
      const lang = code && /(?:^|\s)language-([\w+#.-]{1,30})/.exec(code.className);
      const bar = document.createElement("div");
      bar.className = "code-bar";
      const label = document.createElement("span");
      label.className = "code-lang";
      label.textContent = lang ? lang[1] : "code";
      const button = document.createElement("button");
      button.type = "button";
      button.className = "copy-code";
      button.textContent = "Copy";
      button.setAttribute("aria-label", "Copy code");
      bar.append(label, button);
      const wrap = document.createElement("div");
      wrap.className = "code-block";
      pre.replaceWith(wrap);
      wrap.append(bar, pre);
    }
  }

  /* Render `text` into `target` (replacing its children). Without the libraries (they
     failed to load) the text is shown as plain text: never as HTML. */
  function renderInto(target, text) {
    if (!parser) {
      target.classList.add("plain");
      target.textContent = text;
      return;
    }
    const fragment = window.DOMPurify.sanitize(parser.parse(text), PURIFY);
    decorateCodeBlocks(fragment);
    target.replaceChildren(fragment);
  }

  window.LivechatMarkdown = { renderInto, available, escapeHtml };
})();
